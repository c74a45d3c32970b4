"""Do machine-readable answers hold? Sampled answers with and without the constraint, and speed.

    python benchmarks/structured.py --bundle models/qwen2.5-coder-0.5b-instruct-int4 \\
        --bundle BUNDLE2 [--samples 50] [--max-batch 4] [--json benchmarks/results/x.json]

For each bundle and each schema below: ``--samples`` answers sampled at temperature 0.8
(seeds 0..n-1), once with ``response_format`` enforcing the schema and once with the same
prompt (which asks for that JSON) and no constraint. Every answer is parsed and validated
with ``jsonschema``. Speed: decode tokens/s of the constrained and the free answers, one
request at a time and ``--max-batch`` at once, measured in the same run (the per-token rate
of each answer, (tokens - 1) / decode time, median over answers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table
from edge_runtime.engine import (
    EngineOptions,
    GenerationResult,
    OnnxEngine,
    load_engine,
    parse_request,
)

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {
            "site": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 30},
                "zone": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["name", "zone"], "additionalProperties": False},
            "ok": {"type": "boolean"},
        },
        "required": ["site", "ok"], "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"button": {"enum": ["start", "stop", "pause", "reset", "help"]}},
        "required": ["button"], "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {"readings": {"type": "array", "items": {"type": "integer"},
                                    "minItems": 2, "maxItems": 4}},
        "required": ["readings"], "additionalProperties": False,
    },
    "range": {
        "type": "object",
        "properties": {"temperature": {"type": "number", "minimum": -40, "maximum": 85},
                       "humidity": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["temperature", "humidity"], "additionalProperties": False,
    },
    "optional": {
        "type": "object",
        "properties": {"severity": {"enum": ["low", "high"]},
                       "note": {"type": "string", "maxLength": 60},
                       "retry": {"type": "boolean"}},
        "required": ["severity"], "additionalProperties": False,
    },
    "pattern": {
        "type": "object",
        "properties": {"serial": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"},
                       "date": {"type": "string", "pattern": "^2026-[01][0-9]-[0-3][0-9]$"}},
        "required": ["serial", "date"], "additionalProperties": False,
    },
}
SITUATION = "Gateway 7 in zone 3 reports 41.5 C and 63 % humidity; its serial is GW-0007."


def _request(name: str, seed: int, constrained: bool) -> Any:
    schema = SCHEMAS[name]
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": (
            f"{SITUATION} Answer only with JSON that follows this JSON Schema: "
            f"{json.dumps(schema)}")}],
        "temperature": 0.8, "seed": seed, "max_tokens": 160,
    }
    if constrained:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": name, "schema": schema}}
    return parse_request(body)


def _valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _rate(result: GenerationResult) -> float | None:
    t, n = result.timings.decode_s, result.usage.completion_tokens
    return (n - 1) / t if t > 0 and n > 4 else None


def _generate_all(engine: OnnxEngine, requests: list[Any], parallel: int) -> list[GenerationResult]:
    results: list[GenerationResult | None] = [None] * len(requests)
    lock = threading.Lock()
    todo = list(range(len(requests)))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                index = todo.pop(0)
            results[index] = engine.generate(requests[index])

    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def study(bundle: Path, samples: int, max_batch: int) -> dict[str, Any]:
    engine = load_engine(bundle, EngineOptions(provider="cpu", max_batch=max_batch))
    engine.constraints.load()
    rows = []
    rates: dict[str, list[float]] = {"free-1": [], "schema-1": [], "free-n": [], "schema-n": []}
    for name, schema in SCHEMAS.items():
        row: dict[str, Any] = {"schema": name}
        for constrained in (False, True):
            arm = "schema" if constrained else "free"
            requests = [_request(name, seed, constrained) for seed in range(samples)]
            one = _generate_all(engine, requests[:2], 1)  # one at a time, for speed
            many = _generate_all(engine, requests, max_batch)
            rates[f"{arm}-1"] += [r for r in map(_rate, one) if r]
            rates[f"{arm}-n"] += [r for r in map(_rate, many) if r]
            row[f"{arm}_valid"] = sum(_valid(r.text, schema) for r in many)
            row[f"{arm}_example"] = " ".join(many[0].text.split())[:80]
        row["samples"] = samples
        rows.append(row)
        print(f"{bundle.name} {name}: free {row['free_valid']}/{samples}, "
              f"schema {row['schema_valid']}/{samples}", file=sys.stderr, flush=True)
    speed = {k: statistics.median(v) if v else 0.0 for k, v in rates.items()}
    engine.close()
    return {"bundle": str(bundle), "max_batch": max_batch, "rows": rows, "speed": speed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = [study(b, args.samples, args.max_batch) for b in args.bundle]
    for result in results:
        print(f"\n{result['bundle']}\n")
        print(markdown_table(
            ["schema", "valid, no constraint", "valid, schema enforced", "example (free)"],
            [[r["schema"], f"{r['free_valid']}/{r['samples']}",
              f"{r['schema_valid']}/{r['samples']}", r["free_example"].replace("|", "\\|")]
             for r in result["rows"]]))
        s = result["speed"]
        print(f"\ndecode tok/s, one at a time: free {s['free-1']:.1f}, schema "
              f"{s['schema-1']:.1f} ({s['schema-1'] / max(s['free-1'], 1e-9):.2f}x); "
              f"{result['max_batch']} at once: free {s['free-n']:.1f}, schema "
              f"{s['schema-n']:.1f} ({s['schema-n'] / max(s['free-n'], 1e-9):.2f}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
