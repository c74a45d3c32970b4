"""Do machine-readable answers hold? Sampled answers with and without the constraint, and speed.

    python benchmarks/structured.py --bundle models/qwen2.5-coder-0.5b-instruct-int4 \\
        --bundle BUNDLE2 [--samples 50] [--free-samples N] [--max-batch 4]
        [--json benchmarks/results/x.json]

For each bundle and each schema below: ``--samples`` answers sampled at temperature 0.8
(seeds 0..n-1) with ``response_format`` enforcing the schema, and ``--free-samples`` with the
same prompt (which asks for that JSON) and no constraint. Every answer is parsed and validated
with ``jsonschema`` (``--samples 0`` skips this part).

Speed, in the same run: decode tokens/s with and without a schema whose answers outrun
``max_tokens`` (so both arms decode equally long answers), one request at a time and
``--max-batch`` at once, the arms alternating over ``--speed-rounds`` rounds (see
:func:`_speed`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
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
SPEED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"log": {"type": "array", "minItems": 12, "items": {
        "type": "object",
        "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                       "reading": {"type": "number"},
                       "note": {"type": "string", "maxLength": 40}},
        "required": ["hour", "reading", "note"], "additionalProperties": False}}},
    "required": ["log"], "additionalProperties": False,
}
"""For speed: an answer longer than SPEED_TOKENS either way, so both arms decode as long."""
SPEED_TOKENS = 128
SITUATION = "Gateway 7 in zone 3 reports 41.5 C and 63 % humidity; its serial is GW-0007."


def _request(name: str, seed: int, constrained: bool) -> Any:
    schema = SPEED_SCHEMA if name == "speed" else SCHEMAS[name]
    ask = "Write its hourly log of today." if name == "speed" else ""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": (
            f"{SITUATION} {ask} Answer only with JSON that follows this JSON Schema: "
            f"{json.dumps(schema)}")}],
        "temperature": 0.8, "seed": seed,
        "max_tokens": SPEED_TOKENS if name == "speed" else 160,
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


def study(
    bundle: Path, samples: int, max_batch: int, free_samples: int, rounds: int
) -> dict[str, Any]:
    engine = load_engine(bundle, EngineOptions(provider="cpu", max_batch=max_batch))
    engine.constraints.load()
    rows = []
    for name, schema in SCHEMAS.items() if samples else ():
        row: dict[str, Any] = {"schema": name}
        for constrained in (False, True):
            arm = "schema" if constrained else "free"
            count = samples if constrained else free_samples
            answers = _generate_all(
                engine, [_request(name, seed, constrained) for seed in range(count)], max_batch)
            row[f"{arm}_valid"] = sum(_valid(r.text, schema) for r in answers)
            row[f"{arm}_samples"] = count
            row[f"{arm}_example"] = " ".join(answers[0].text.split())[:80] if answers else ""
        rows.append(row)
        print(f"{bundle.name} {name}: free {row['free_valid']}/{free_samples}, "
              f"schema {row['schema_valid']}/{samples}", file=sys.stderr, flush=True)
    speed = _speed(engine, max_batch, rounds)
    engine.close()
    return {"bundle": str(bundle), "max_batch": max_batch, "rows": rows, "speed": speed}


def _speed(engine: OnnxEngine, max_batch: int, rounds: int) -> dict[str, float]:
    """Decode tok/s with and without the schema, arms alternating, answers as long.

    One at a time: the median over answers of (tokens - 1) / decode time. ``max_batch`` at
    once: 2 x max_batch answers; their tokens past the first over the wall time less the
    scheduler's prompt-reading time, so that what the constraint costs between forwards
    counts and prefills do not.
    """
    single: dict[str, list[float]] = {"free": [], "schema": []}
    batched: dict[str, list[float]] = {"free": [], "schema": []}
    for i in range(rounds):
        for constrained in (False, True) if i % 2 == 0 else (True, False):
            arm = "schema" if constrained else "free"
            seeds = range(100 + 10 * i, 100 + 10 * i + 2 * max_batch)
            requests = [_request("speed", seed, constrained) for seed in seeds]
            single[arm] += [r for r in map(_rate, _generate_all(engine, requests[:1], 1)) if r]
            prefill = engine.counters.prefill_s
            began = time.perf_counter()
            answers = _generate_all(engine, requests, max_batch)
            busy = time.perf_counter() - began - (engine.counters.prefill_s - prefill)
            tokens = sum(max(r.usage.completion_tokens - 1, 0) for r in answers)
            batched[arm].append(tokens / busy)
            print(f"speed round {i + 1} {arm}: {max_batch} at once {batched[arm][-1]:.1f} tok/s",
                  file=sys.stderr, flush=True)

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    return {"free-1": median(single["free"]), "schema-1": median(single["schema"]),
            "free-n": median(batched["free"]), "schema-n": median(batched["schema"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--free-samples", type=int,
                        help="answers without the constraint per schema (default: --samples)")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--speed-rounds", type=int, default=4,
                        help="rounds of the speed comparison (arms alternating)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    free = args.samples if args.free_samples is None else args.free_samples
    results = [study(b, args.samples, args.max_batch, free, args.speed_rounds)
               for b in args.bundle]
    for result in results:
        print(f"\n{result['bundle']}\n")
        print(markdown_table(
            ["schema", "valid, no constraint", "valid, schema enforced", "example (free)"],
            [[r["schema"], f"{r['free_valid']}/{r['free_samples']}",
              f"{r['schema_valid']}/{r['schema_samples']}", r["free_example"].replace("|", "\\|")]
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
