"""Measure llama.cpp (llama-cpp-python) on the source GGUF (run in the anchor venv).

    python -m benchmarks.stacks.llamacpp --model-path F.gguf --prompt-file P.json --threads 2
"""

from __future__ import annotations

import time

import llama_cpp

from benchmarks.stacks.common import RunResult, emit, load_prompt, parse_args, peak_rss_mb

CONTEXT = 1024


def _generate(llm: llama_cpp.Llama, ids: list[int], max_new: int) -> tuple[list[int], float, float]:
    """Greedy-decode exactly ``max_new`` tokens (end-of-text ignored); return ids and times."""
    out: list[int] = []
    start = time.perf_counter()
    first = 0.0
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                              repeat_penalty=1.0, reset=True):
        if not out:
            first = time.perf_counter() - start
        out.append(int(token))
        if len(out) >= max_new:
            break
    return out, first, time.perf_counter() - start


def _own_ids(llm: llama_cpp.Llama, text: str) -> list[int]:
    """Return llama.cpp's own tokenization of the prompt, to cross-check the shared ids."""
    return [int(i) for i in llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)]


def main() -> int:
    args = parse_args(__doc__ or "")
    text, ids = load_prompt(args.prompt_file)
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(args.model_path), n_ctx=CONTEXT, n_batch=512,
        n_threads=args.threads, n_threads_batch=args.threads, verbose=False,
    )
    load_s = time.perf_counter() - start
    out, first, total = _generate(llm, ids, args.max_new)
    emit(RunResult(
        stack="llama.cpp", model_path=str(args.model_path), threads=args.threads,
        load_s=load_s, prompt_tokens=len(ids), new_tokens=len(out), ttft_s=first,
        prefill_s=first, decode_s=total - first, peak_rss_mb=peak_rss_mb(), token_ids=out,
        extra={"version": llama_cpp.__version__, "own_prompt_ids": _own_ids(llm, text)},
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
