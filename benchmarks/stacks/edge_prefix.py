"""edge-runtime as a prefix-cache benchmark worker (run in the main interpreter).

    python -m benchmarks.stacks.edge_prefix --model-path BUNDLE --threads 2 --cache-mb 128
"""

from __future__ import annotations

from benchmarks.stacks.prefix_worker import Answer, serve, worker_args
from edge_runtime.engine import EngineOptions, load_engine
from edge_runtime.engine.request import Sampling


def main() -> int:
    args = worker_args(__doc__)
    engine = load_engine(args.model_path, EngineOptions(
        provider="cpu", threads=args.threads, prefix_cache_mb=args.cache_mb))

    def generate(ids: list[int], max_new: int) -> Answer:
        result = engine.generate_ids(ids, Sampling(max_tokens=max_new, temperature=0.0))
        t = result.timings
        ttft = t.queued_s + t.first_token_s  # from the call, as the other stacks count it
        return Answer(ttft, ttft + t.decode_s, result.text, len(result.token_ids),
                      result.usage.cached_tokens)

    def clear() -> None:
        if engine.prefix_cache is not None:
            engine.prefix_cache.clear()

    try:
        return serve(generate, clear)
    finally:
        engine.close()


if __name__ == "__main__":
    raise SystemExit(main())
