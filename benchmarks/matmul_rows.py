"""One int4 MatMulNBits alone: how its cost grows with the rows it multiplies.

    python benchmarks/matmul_rows.py [--k 896] [--n 4864] [--threads 2] [--json out.json]

A random [K, N] weight is quantized the way the converter does (symmetric blocks of 32) at
each ``--accuracy`` level and 8 bits, then ``x @ W`` is timed for 1, 2, 4 and 8 rows
(alternating, medians of ``--rounds``). If the time per row stays flat, batching sequences
shares little of the work; if it falls, the kernel amortizes across rows.
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

from benchmarks.report import markdown_table

ROWS = (1, 2, 4, 8)


def _session(k: int, n: int, bits: int, accuracy: int, threads: int) -> object:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weight = np.random.default_rng(0).normal(0, 0.02, (k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "one-matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True,
                                     accuracy_level=accuracy)
    quantizer.process()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(quantizer.model.model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def measure(k: int, n: int, threads: int, rounds: int, calls: int) -> dict[str, dict[int, float]]:
    """Return microseconds per call, per configuration and row count."""
    configs = {"int4 acc4": (4, 4), "int4 acc1": (4, 1), "int8 acc4": (8, 4)}
    sessions = {name: _session(k, n, bits, acc, threads) for name, (bits, acc) in configs.items()}
    inputs = {rows: np.random.default_rng(rows).normal(size=(rows, k)).astype(np.float32)
              for rows in ROWS}
    times: dict[str, dict[int, list[float]]] = {name: {r: [] for r in ROWS} for name in configs}
    for _ in range(rounds):
        for name, session in sessions.items():
            for rows, x in inputs.items():
                for _ in range(5):  # warm up this shape
                    session.run(None, {"x": x})  # type: ignore[attr-defined]
                started = time.perf_counter()
                for _ in range(calls):
                    session.run(None, {"x": x})  # type: ignore[attr-defined]
                times[name][rows].append((time.perf_counter() - started) / calls * 1e6)
    return {name: {r: statistics.median(v) for r, v in per.items()} for name, per in times.items()}


def table(results: dict[str, dict[int, float]]) -> str:
    header = ["weights", *(f"{r} row{'s' if r > 1 else ''}: us (per row)" for r in ROWS)]
    body = [[name, *(f"{us:.0f} ({us / r:.0f})" for r, us in per.items())]
            for name, per in results.items()]
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=896, help="input features (Qwen hidden: 896)")
    parser.add_argument("--n", type=int, default=4864, help="output features (Qwen MLP: 4864)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = measure(args.k, args.n, args.threads, args.rounds, args.calls)
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"k": args.k, "n": args.n, "threads": args.threads,
                                         "us_per_call": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
