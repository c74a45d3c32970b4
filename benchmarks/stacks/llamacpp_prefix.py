"""llama.cpp (llama-cpp-python) as a prefix-cache benchmark worker (run in the anchor venv).

    python -m benchmarks.stacks.llamacpp_prefix --model-path F.gguf --threads 2 --cache-mb 128

It reuses prefixes the two ways llama-cpp-python does: the longest common start with what
its context holds (the previous request and answer), and its RAM state cache
(``LlamaRAMCache``, bounded by ``--cache-mb``), which saves the whole state after each
completion and loads the saved state with the longest common start when that beats the
context's.
"""

from __future__ import annotations

import time

import llama_cpp

from benchmarks.stacks.prefix_worker import Answer, serve, worker_args

CONTEXT = 2048


def main() -> int:
    args = worker_args(__doc__)
    llm = llama_cpp.Llama(model_path=str(args.model_path), n_ctx=CONTEXT, n_batch=512,
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)

    def fresh_cache() -> None:
        llm.reset()
        # A saved state carries the whole token array, the tail past its tokens included,
        # and llama-cpp-python matches prompts against all of it: a tail left by an earlier
        # run of the same prompts makes it take that state over its context, then read the
        # prompt whole. No token id is negative.
        llm.input_ids.fill(-1)
        if args.cache_mb > 0:
            llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=args.cache_mb * 2**20))

    def reusable(ids: list[int]) -> int:
        """The prompt tokens llama-cpp-python will not read again (context or state cache)."""
        held = llama_cpp.Llama.longest_token_prefix(llm._input_ids.tolist(), ids)
        cache = llm.cache
        if isinstance(cache, llama_cpp.LlamaRAMCache) and ids in cache:
            state = cache[ids]  # the same lookup create_completion makes
            held = max(held, llama_cpp.Llama.longest_token_prefix(state.input_ids.tolist(), ids))
        return min(held, len(ids) - 1)

    def generate(ids: list[int], max_new: int) -> Answer:
        reused = reusable(ids)
        start = time.perf_counter()
        first, pieces, count = 0.0, [], 0
        for chunk in llm.create_completion(ids, max_tokens=max_new, temperature=0.0, top_k=1,
                                           top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                           stream=True):
            if not first:
                first = time.perf_counter() - start
            pieces.append(chunk["choices"][0]["text"])
            count += 1
        return Answer(first, time.perf_counter() - start, "".join(pieces), count, reused)

    fresh_cache()
    return serve(generate, fresh_cache)


if __name__ == "__main__":
    raise SystemExit(main())
