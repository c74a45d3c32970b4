"""What one batched decode forward costs at batch 1, 2, 3, 4: the ceiling of batching.

    python benchmarks/batch_steps.py --model qwen [--steps 40] [--json out.json]

Each slot of a 4-slot KV buffer is prefilled with the benchmark prompt; then decode forwards
over the first n slots are timed, n = 1..4 in turn (alternating, so drift hits every batch
size alike), ``--steps`` forwards per round, ``--rounds`` rounds, medians reported. If a
forward over 4 rows costs c times a forward over one, 4 streams can decode at most 4/c
times as fast as one: that bound is in the last column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import sources
from benchmarks.report import markdown_table
from edge_runtime.engine import EngineOptions, load_engine
from edge_runtime.engine.runners.gqa import GqaSlots

BATCHES = (1, 2, 3, 4)


def _slots(bundle: Path, threads: int, profile: str | None = None) -> tuple[GqaSlots, list[int]]:
    engine = load_engine(bundle, EngineOptions(provider="cpu", threads=threads))
    m = engine.manifest
    if m.graph.kind != "gqa":
        raise SystemExit(f"{bundle}: batching needs a gqa graph, this one is {m.graph.kind}")
    if profile is None:
        slots = engine.new_slots(max(BATCHES))
    else:
        slots = GqaSlots(_profiled_session(bundle, threads, profile), m, slots=max(BATCHES))
    assert isinstance(slots, GqaSlots)
    ids = engine.tokenizer.encode(sources.PROMPT_FILE.read_text())
    return slots, ids


def measure(bundle: Path, threads: int, steps: int, rounds: int) -> dict[int, float]:
    """Return the median seconds of one decode forward at each batch size."""
    slots, ids = _slots(bundle, threads)
    prompt = np.asarray(ids, dtype=np.int64)[None, :]
    for slot in range(max(BATCHES)):
        slots.run(slot, prompt, np.zeros(1, dtype=np.int64))
    times: dict[int, list[float]] = {n: [] for n in BATCHES}
    token = np.full((max(BATCHES), 1), ids[-1], dtype=np.int64)
    for _ in range(rounds):
        for n in BATCHES:
            lengths = np.full(n, len(ids), dtype=np.int64)
            slots.run(0, token[:n], lengths)  # warm this shape
            started = time.perf_counter()
            for _ in range(steps):
                # The same position each time: the cache does not grow between rounds.
                slots.run(0, token[:n], lengths)
            times[n].append((time.perf_counter() - started) / steps)
    return {n: statistics.median(v) for n, v in times.items()}


def _profiled_session(bundle: Path, threads: int, prefix: str) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(str(bundle / "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def profile_ops(bundle: Path, threads: int, steps: int, batch: int) -> dict[str, float]:
    """Return ms per decode forward by operator type at ``batch`` (from ORT's profiler)."""
    import collections
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        slots, ids = _slots(bundle, threads, profile=f"{tmp}/ort")
        prompt = np.asarray(ids, dtype=np.int64)[None, :]
        for slot in range(batch):
            slots.run(slot, prompt, np.zeros(1, dtype=np.int64))
        token = np.full((batch, 1), ids[-1], dtype=np.int64)
        lengths = np.full(batch, len(ids), dtype=np.int64)
        for _ in range(steps):
            slots.run(0, token, lengths)
        events = json.loads(Path(slots.session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    since = runs[-steps]["ts"]
    totals: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= since:
            op = e["args"]["op_name"] + (" (lm_head)" if "lm_head" in e["name"] else "")
            totals[op] += e["dur"]
    totals["whole forward"] = sum(r["dur"] for r in runs[-steps:])
    return {op: us / steps / 1000 for op, us in totals.most_common()}


def profile_table(by_batch: dict[int, dict[str, float]]) -> str:
    ops = list(by_batch[1])
    header = ["operator", *(f"batch {b} ms" for b in by_batch), "ratio"]
    rows = [[op, *(f"{by_batch[b].get(op, 0.0):.2f}" for b in by_batch),
             f"{by_batch[4].get(op, 0.0) / max(by_batch[1][op], 1e-9):.2f}x"] for op in ops]
    return markdown_table(header, rows)


def table(title: str, step_s: dict[int, float]) -> str:
    one = step_s[1]
    rows = [[str(n), f"{s * 1e3:.2f}", f"{s / one:.2f}x", f"{n / s:.1f}", f"{n * one / s:.2f}x"]
            for n, s in step_s.items()]
    header = ["batch", "ms per forward", "vs batch 1", "tokens/s", "bound on n-stream speedup"]
    return f"#### {title}\n\n" + markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*sources.MODELS, "all"], default="all")
    parser.add_argument("--quant", default="int4", choices=["int4", "int8", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="also break the batch-1 and batch-4 forwards down by operator")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    keys = list(sources.MODELS) if args.model == "all" else [args.model]
    out: dict[str, object] = {}
    for key in keys:
        spec = sources.MODELS[key]
        bundle = sources.bundle_path(spec, args.quant)
        if not (bundle / "manifest.json").is_file():
            print(f"skip {key}: no bundle at {bundle}", file=sys.stderr)
            continue
        step_s = measure(bundle, args.threads, args.steps, args.rounds)
        out[key] = {str(n): s for n, s in step_s.items()}
        print(table(f"{spec.title} {args.quant}", step_s) + "\n")
        if args.profile:
            ops = {b: profile_ops(bundle, args.threads, args.steps, b) for b in (1, 4)}
            out[f"{key}-profile"] = {str(b): v for b, v in ops.items()}
            print(profile_table(ops) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "step_s": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
