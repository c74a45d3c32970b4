"""Measure onnxruntime-genai on its builder's int4 model (run in the anchor venv).

    python -m benchmarks.stacks.genai --model-path DIR --prompt-file P.json --threads 2
"""

from __future__ import annotations

import json
import time

import onnxruntime_genai as og

from benchmarks.stacks.common import RunResult, emit, load_prompt, parse_args, peak_rss_mb


def _config(model_dir: str, threads: int) -> og.Config:
    """Load the model's config pinned to the CPU provider and ``threads`` intra-op threads."""
    config = og.Config(model_dir)
    config.clear_providers()
    overlay = {"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}
    config.overlay(json.dumps(overlay))
    return config


def _generate(model: og.Model, ids: list[int], max_new: int) -> tuple[list[int], float, float]:
    """Greedy-decode exactly ``max_new`` tokens; return ids, time to first token, total time."""
    params = og.GeneratorParams(model)
    total = len(ids) + max_new
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    out: list[int] = []
    start = time.perf_counter()
    generator.append_tokens(ids)
    generator.generate_next_token()
    out.append(int(generator.get_next_tokens()[0]))
    first = time.perf_counter() - start
    while len(out) < max_new and not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out, first, time.perf_counter() - start


def main() -> int:
    args = parse_args(__doc__ or "")
    _, ids = load_prompt(args.prompt_file)
    start = time.perf_counter()
    model = og.Model(_config(str(args.model_path), args.threads))
    load_s = time.perf_counter() - start
    out, first, total = _generate(model, ids, args.max_new)
    emit(RunResult(
        stack="onnxruntime-genai", model_path=str(args.model_path), threads=args.threads,
        load_s=load_s, prompt_tokens=len(ids), new_tokens=len(out), ttft_s=first,
        prefill_s=first, decode_s=total - first, peak_rss_mb=peak_rss_mb(), token_ids=out,
        extra={"version": og.__version__},
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
