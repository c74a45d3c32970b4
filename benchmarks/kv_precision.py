"""KV cache precision: decode speed and greedy agreement with the KV in fp32, fp16 and int8.

    python benchmarks/kv_precision.py BUNDLE [--prompts 600,1500] [--pairs 3] [--threads 2]
        [--json benchmarks/results/kv_precision.json]

The gqa graph's GroupQueryAttention reads and writes the KV cache in the type of its inputs.
From an fp32-KV bundle this makes two copies in a work folder: one whose attention runs in
fp16 (q, k, v and the rotary tables cast to fp16, its output cast back), and one that keeps
the cache in int8 with a fixed scale per layer, KV head and channel (ONNX Runtime's
``k_quant_type``/``v_quant_type`` PER_CHANNEL, ``kv_cache_bit_width`` 8), the scales taken
from the largest keys and values the fp32 graph writes over the benchmark's prompt texts.
Each variant then decodes 128 tokens after prompts of each length, in fresh processes,
variants alternating; and answers a few real prompts greedily, compared token by token with
fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine_info  # noqa: E402

DATA = REPO / "benchmarks" / "data"
NEW_TOKENS = 128
BYTES = {"float32": 4, "float16": 2, "int8": 1}

MEASURE = r'''
import json, sys
import numpy as np
from edge_runtime.engine import EngineOptions, GenerationRequest, load_engine
from edge_runtime.engine.request import Sampling
bundle, n, threads, questions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
e = load_engine(bundle, EngineOptions(provider="cpu", threads=threads))
rng = np.random.default_rng(0)
prompt = [int(x) for x in rng.integers(100, 20000, n)]
e.generate_ids(prompt[:50], Sampling(max_tokens=4, temperature=0.0))
r = e.generate_ids(prompt, Sampling(max_tokens=128, temperature=0.0), ignore_eos=True)
t = r.timings
answers = [list(e.generate(GenerationRequest(prompt=q, max_tokens=64, temperature=0.0)).token_ids)
           for q in questions]
print(json.dumps({"ttft_s": t.first_token_s, "decode_tps": (len(r.token_ids) - 1) / t.decode_s,
                  "answers": answers}))
e.close()
'''


def _onnx() -> Any:
    import onnx

    return onnx


def _save(model: Any, out: Path, source: Path, kv_dtype: str) -> Path:
    """Write ``model`` as a bundle in ``out``: ``source``'s other files, a fresh manifest."""
    from edge_runtime.bundle import sha256_file

    onnx = _onnx()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    (out / "model.onnx.data").unlink()
    onnx.save_model(model, str(out / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["graph"]["kv_dtype"] = kv_dtype
    for name in ("model.onnx", "model.onnx.data"):
        manifest["files"][name] = {"sha256": sha256_file(out / name),
                                   "size": (out / name).stat().st_size}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def _set_kv_type(graph: Any, elem: int) -> None:
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = elem


def fp16_variant(source: Path, out: Path) -> Path:
    """Copy ``source`` with GroupQueryAttention (and so the KV cache) in fp16."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source / "model.onnx"))
    graph = model.graph
    tables = {t.name: t for t in graph.initializer if t.name.startswith("rotary")}
    nodes, casts = [], {}

    def half(name: str) -> str:
        if name not in casts:
            if name in tables:
                array = numpy_helper.to_array(tables[name]).astype(np.float16)
                graph.initializer.append(numpy_helper.from_array(array, name + ".fp16"))
                casts[name] = name + ".fp16"
            else:
                casts[name] = name + "/fp16"
                nodes.append(helper.make_node("Cast", [name], [casts[name]],
                                              to=TensorProto.FLOAT16, name=name + "/fp16/Cast"))
        return casts[name]

    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            nodes.append(node)
            continue
        inputs = list(node.input)
        for i in (0, 1, 2, 7, 8):  # query, key, value, cos and sin tables
            if i < len(inputs) and inputs[i]:
                inputs[i] = half(inputs[i])
        node.input[:] = inputs
        out_name = node.output[0]
        node.output[0] = out_name + "/fp16"
        nodes += [node, helper.make_node("Cast", [out_name + "/fp16"], [out_name],
                                         to=TensorProto.FLOAT, name=out_name + "/Cast")]
    graph.ClearField("node")
    graph.node.extend(nodes)
    _set_kv_type(graph, TensorProto.FLOAT16)
    return _save(model, out, source, "float16")


def kv_scales(source: Path, texts: list[str], threads: int) -> np.ndarray:
    """The largest |key| and |value| per layer, KV head and channel over ``texts``, / 127.

    Returned as [layers, 2, kv_heads, 1, head_dim].
    """
    from edge_runtime.engine import EngineOptions, load_engine

    engine = load_engine(source, EngineOptions(provider="cpu", threads=threads))
    slots = engine.new_slots(1)
    top = None
    for text in texts:
        ids = engine.tokenizer.encode(text)[: slots.max_length - 1]
        slots.fit(len(ids))
        for first in range(0, len(ids), slots.chunk):
            chunk = np.asarray([ids[first : first + slots.chunk]])
            slots.run(0, chunk, np.array([first]))
        kv = np.abs(slots.read(0, 0, len(ids))).max(axis=3, keepdims=True)  # type: ignore[attr-defined]
        top = kv if top is None else np.maximum(top, kv)
    engine.close()
    assert top is not None
    return np.maximum(top, 1e-6) / 127.0


def int8_variant(source: Path, out: Path, scales: np.ndarray) -> Path:
    """Copy ``source`` keeping the KV cache in int8 with fixed per-channel ``scales``."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source / "model.onnx"))
    graph = model.graph
    layer = 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        names = []
        for part, index in (("key", 0), ("value", 1)):
            name = f"kv_scale.{layer}.{part}"
            graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(scales[layer, index], dtype=np.float32), name))
            names.append(name)
        inputs = list(node.input) + [""] * (12 - len(node.input))
        node.input[:] = [*inputs[:12], *names]
        node.attribute.extend([helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("kv_cache_bit_width", 8)])
        layer += 1
    _set_kv_type(graph, TensorProto.INT8)
    return _save(model, out, source, "int8")


def measure(bundle: Path, prompt: int, threads: int, questions: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(bundle), str(prompt), str(threads),
                           *questions], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """The share of leading greedy tokens two variants agree on, over all answers."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        same, total = same + n, total + max(len(x), 1)
    return same / total if total else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="a gqa bundle with its KV in fp32")
    parser.add_argument("--prompts", default="600,1500")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/kv_precision.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kv-precision-") as tmp:
        rows = study(args, Path(tmp))
    print("| KV | prompt | bytes/value | decode tok/s (runs) | median | vs fp32 "
          "| greedy agreement |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kv']} | {r['prompt_tokens']} | {r['bytes_per_value']} | "
              f"{r['decode_tps']} | {r['median_tps']} | {r['vs_fp32']} | {r['agreement']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info(), "bundle": str(args.bundle),
                                     "rows": rows}, indent=2))
    print(f"wrote {args.json}")
    return 0


def study(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Build the variants in ``work``, run them alternating, and compare them with fp32."""
    texts = [p.read_text() for p in [DATA / "prompt.txt", *sorted((DATA / "prefix").glob("*.txt"))]]
    questions = (DATA / "prefix" / "questions.txt").read_text().strip().splitlines()[:4]
    print("building the fp16 and int8 variants", file=sys.stderr)
    variants = {
        "float32": args.bundle,
        "float16": fp16_variant(args.bundle, work / "kv-fp16"),
        "int8": int8_variant(args.bundle, work / "kv-int8", kv_scales(args.bundle, texts,
                                                                       args.threads)),
    }
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {v: {} for v in variants}
    for prompt in (int(n) for n in args.prompts.split(",")):
        for i in range(args.pairs):
            order = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in order:
                print(f"{name}, {prompt}-token prompt, run {i + 1}", file=sys.stderr)
                runs[name].setdefault(prompt, []).append(
                    measure(variants[name], prompt, args.threads, questions))
    rows = []
    reference = runs["float32"]
    for name, by_prompt in runs.items():
        for prompt, results in by_prompt.items():
            ok = [r for r in results if "error" not in r]
            tps = sorted(r["decode_tps"] for r in ok)
            base = sorted(r["decode_tps"] for r in reference[prompt] if "error" not in r)
            median, base_median = (tps[len(tps) // 2] if tps else 0.0), base[len(base) // 2]
            rows.append({
                "kv": name, "prompt_tokens": prompt, "bytes_per_value": BYTES[name],
                "decode_tps": [round(t, 1) for t in tps], "median_tps": round(median, 1),
                "vs_fp32": round(median / base_median, 3) if base_median else None,
                "agreement": round(agreement(ok[0]["answers"], reference[prompt][0]["answers"]),
                                   3) if ok else None,
                "errors": [r["error"] for r in results if "error" in r],
            })
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
