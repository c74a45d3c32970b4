"""Measure edge-runtime on a bundle (run in the main interpreter).

    python -m benchmarks.stacks.edge --model-path BUNDLE --prompt-file P.json --threads 2
    python -m benchmarks.stacks.edge ... --streams 4     # concurrent streams
    python -m benchmarks.stacks.edge ... --memory trim_heap --ort-cache DIR

``--memory`` names the memory levers to pull (``off`` for none; by default the detected
device profile's, as the daemon does); ``--ort-cache`` loads through the optimized-graph
cache, as the daemon does.

With ``--streams N`` the engine is loaded with ``max_batch`` N; the adapter first runs one
stream alone (the single-stream figure, also the warm-up), then N threads that call
``generate_ids`` at once. Bundles whose graph cannot batch serve them one at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import devices
from benchmarks.stacks.common import RunResult, emit, load_prompt, parse_args, peak_rss_mb
from edge_runtime.engine import EngineOptions, GenerationResult, Sampling, load_engine
from edge_runtime.engine.engine import OnnxEngine
from edge_runtime.engine.scheduler import SchedulerCounters
from edge_runtime.hugepages import current as huge_pages
from edge_runtime.memory import MemoryPolicy, install


@dataclass(frozen=True)
class _Timed:
    result: GenerationResult
    started: float
    ended: float


def _run(engine: OnnxEngine, ids: list[int], max_new: int) -> _Timed:
    """Greedy-decode exactly ``max_new`` tokens (end-of-text ignored)."""
    params = Sampling(max_tokens=max_new, temperature=0.0)
    started = time.perf_counter()
    result = engine.generate_ids(ids, params, ignore_eos=True)
    return _Timed(result, started, time.perf_counter())


def _concurrent(engine: OnnxEngine, ids: list[int], max_new: int, streams: int) -> list[_Timed]:
    """Run ``streams`` generations from as many threads at once."""
    results: list[_Timed | None] = [None] * streams
    barrier = threading.Barrier(streams)

    def worker(index: int) -> None:
        barrier.wait()
        results[index] = _run(engine, ids, max_new)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def _streams_figures(single: _Timed, runs: list[_Timed]) -> dict[str, object]:
    """Return total throughput of the concurrent runs next to the single stream's."""
    start = min(r.started for r in runs)
    end = max(r.ended for r in runs)
    first = min(r.started + r.result.timings.first_token_s for r in runs)
    tokens = sum(r.result.usage.completion_tokens for r in runs)
    decode_steps = sum(r.result.usage.completion_tokens - 1 for r in runs)
    one = single.result
    single_decode = (one.usage.completion_tokens - 1) / max(one.timings.decode_s, 1e-9)
    single_e2e = one.usage.completion_tokens / (single.ended - single.started)
    total_decode = decode_steps / max(end - first, 1e-9)
    total_e2e = tokens / (end - start)
    return {
        "streams": len(runs),
        "single_decode_tps": single_decode,
        "single_end_to_end_tps": single_e2e,
        "total_decode_tps": total_decode,
        "total_end_to_end_tps": total_e2e,
        "decode_speedup": total_decode / single_decode,
        "end_to_end_speedup": total_e2e / single_e2e,
        "wall_s": end - start,
        "per_stream_decode_tps": [
            (r.result.usage.completion_tokens - 1) / max(r.result.timings.decode_s, 1e-9)
            for r in runs
        ],
    }


def _memory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", help="memory levers, comma-separated, or 'off'")
    parser.add_argument("--ort-cache", type=Path, help="optimized-graph cache folder")


def memory_policy(spec: str | None) -> MemoryPolicy:
    """Return the policy ``spec`` names: lever names, 'off', or None for the profile's."""
    if spec is None:
        return MemoryPolicy.from_names(devices.detect().memory)
    return MemoryPolicy.from_names(n for n in spec.split(",") if n and n != "off")


def main() -> int:
    args = parse_args(__doc__ or "", _memory_arguments)
    _, ids = load_prompt(args.prompt_file)
    options = EngineOptions(provider="cpu", threads=args.threads,
                            optimized_model_dir=args.ort_cache,
                            max_batch=max(args.streams, 1))
    memory = memory_policy(args.memory)
    install(memory)  # as `edge-runtime serve` does; huge pages re-execute this process
    start = time.perf_counter()
    engine = load_engine(args.model_path, options, memory)
    load_s = time.perf_counter() - start
    graph = engine.manifest.graph.kind
    extra: dict[str, object] = {
        "graph": graph,
        "quantization": engine.manifest.quantization.method,
        "bits": engine.manifest.quantization.bits,
        "huge_pages": huge_pages().active,
        "memory": list(memory.names),
        "cache_hit": engine.report.optimized_cache_hit,
    }
    timed = _run(engine, ids, args.max_new)
    if args.streams > 1:
        extra.update(_measure_streams(engine, ids, args.max_new, args.streams, timed))
    result = timed.result
    emit(RunResult(
        stack="edge-runtime", model_path=str(args.model_path), threads=args.threads,
        load_s=load_s, prompt_tokens=result.usage.prompt_tokens,
        new_tokens=result.usage.completion_tokens, ttft_s=result.timings.first_token_s,
        prefill_s=result.timings.first_token_s, decode_s=result.timings.decode_s,
        peak_rss_mb=peak_rss_mb(), token_ids=list(result.token_ids), extra=extra,
    ))
    return 0


def _measure_streams(
    engine: OnnxEngine, ids: list[int], max_new: int, streams: int, single: _Timed
) -> dict[str, object]:
    """Measure ``streams`` concurrent generations, batched when the graph allows it."""
    if engine.capacity == 1:
        figures = _streams_figures(single, _concurrent(engine, ids, max_new, streams))
        return {**figures, "batching": False}
    _concurrent(engine, ids[:16], 4, streams)  # warm the batched shapes once
    before = dataclasses.replace(engine.counters)
    runs = _concurrent(engine, ids, max_new, streams)
    figures = _streams_figures(single, runs)
    return {**figures, **_phase_figures(before, engine.counters, figures), "batching": True,
            "peak_batch": engine.counters.peak_batch}


def _phase_figures(
    before: SchedulerCounters, after: SchedulerCounters, figures: dict[str, object]
) -> dict[str, object]:
    """Decode throughput over the batched decode forwards alone (prefills excluded)."""
    tokens = after.decode_tokens - before.decode_tokens
    seconds = after.decode_s - before.decode_s
    tps = tokens / seconds if seconds > 0 else 0.0
    single = float(figures["single_decode_tps"])  # type: ignore[arg-type]
    return {
        "batched_decode_tps": tps,
        "batched_decode_speedup": tps / single if single > 0 else 0.0,
        "prefill_s": after.prefill_s - before.prefill_s,
        "batched_decode_s": seconds,
        "mean_batch": tokens / max(after.decode_steps - before.decode_steps, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
