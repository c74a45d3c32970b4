"""What a JSON Schema constraint costs: library load, compile, mask per token, decode speed.

    python benchmarks/constraints.py --bundle models/qwen2.5-coder-0.5b-instruct-int4 \\
        [--bundle ...] [--tokens 64] [--rounds 3] [--json out.json]

Per bundle: building the llguidance tokenizer (seconds, and the memory it keeps), compiling
the schema (cold, then from the factory's cache), and a greedy decode of ``--tokens``
tokens with the real model in three arms, alternated round by round so drift hits all
alike: no constraint; the schema applied after each forward; the schema's next mask
prepared in a worker thread while the forward runs. When the schema's answer is complete
a fresh constraint continues, so every arm decodes the same number of tokens. Per token,
the constraint's cost on the decoding thread (apply: mask, unpacking, -inf; consume;
prepare) is set beside the forward's: on a busy machine that fraction is steadier than
the tokens/s ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table
from edge_runtime.engine import EngineOptions, load_engine
from edge_runtime.engine.constraints import Constraint, ConstraintFactory

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "severity": {"enum": ["low", "medium", "high", "critical"]},
        "action": {"enum": ["ignore", "notify", "shutdown"]},
        "temperature": {"type": "number", "minimum": -40, "maximum": 85},
        "readings": {"type": "array", "items": {"type": "integer"}, "minItems": 1,
                     "maxItems": 5},
        "note": {"type": "string", "maxLength": 120},
    },
    "required": ["severity", "action", "temperature", "readings", "note"],
    "additionalProperties": False,
}
SPEC = {"type": "json_schema", "json_schema": {"name": "status", "schema": SCHEMA}}
PROMPT = (
    "The boiler gateway reports 91 C, rising for ten minutes, pressure normal. "
    "Answer as JSON with severity, action, temperature, readings and a short note."
)
ARMS = ("none", "schema", "schema+prepare")


@dataclass(frozen=True)
class ArmRun:
    """One timed decode."""

    arm: str
    tokens: int
    decode_s: float
    forward_ms: float  # median per token
    constraint_us: float  # median per token of apply, consume and prepare; 0 without one
    text: str


def rss_mb() -> float:
    """Resident set size after giving freed heap back (so kept memory is what is counted)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def chat_prompt(bundle: Path) -> str:
    """Return PROMPT as one user turn through the bundle's own chat template."""
    env = jinja2.Environment()
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    template = env.from_string((bundle / "chat_template.jinja").read_text(encoding="utf-8"))
    return template.render(messages=[{"role": "user", "content": PROMPT}],
                           add_generation_prompt=True)


def load_factory(bundle: Path, engine: Any) -> tuple[ConstraintFactory, dict[str, float]]:
    arch = engine.manifest.architecture
    factory = ConstraintFactory(bundle / "tokenizer.json", eos_ids=arch.eos_token_ids,
                                vocab_size=arch.vocab_size)
    before = rss_mb()
    start = time.perf_counter()
    factory.load()
    load_s = time.perf_counter() - start
    kept = rss_mb() - before
    start = time.perf_counter()
    factory.compile(SPEC)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    factory.compile(SPEC)
    cached = time.perf_counter() - start
    return factory, {"load_s": load_s, "kept_mb": kept, "compile_ms": cold * 1e3,
                     "compile_cached_ms": cached * 1e3}


def decode(engine: Any, factory: ConstraintFactory, prompt_ids: list[int], arm: str,
           tokens: int) -> ArmRun:
    """Greedy-decode ``tokens`` tokens after the prompt in one arm; time the decode loop."""
    runner = engine.single_sequence()
    runner.reset(len(prompt_ids) + tokens + 1)
    logits = runner.forward(np.asarray(prompt_ids, dtype=np.int64))
    constraint: Constraint | None = factory.compile(SPEC) if arm != "none" else None
    ids: list[int] = []
    costs: list[float] = []
    forwards: list[float] = []
    start = time.perf_counter()
    while len(ids) < tokens:
        began = time.perf_counter()
        if constraint is not None and constraint.done:
            constraint = factory.compile(SPEC)
        if constraint is not None:
            constraint.apply(logits)
        token = int(np.argmax(logits))
        if constraint is not None:
            constraint.consume(token)
            if arm == "schema+prepare" and not constraint.done:
                constraint.prepare()
        ids.append(token)
        costs.append(time.perf_counter() - began)
        began = time.perf_counter()
        logits = runner.forward(np.array([token], dtype=np.int64))
        forwards.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    cost_us = statistics.median(costs) * 1e6 if constraint is not None else 0.0
    return ArmRun(arm, tokens, elapsed, statistics.median(forwards) * 1e3, cost_us,
                  engine.tokenizer.decode(ids))


def bench_bundle(bundle: Path, tokens: int, rounds: int) -> dict[str, Any]:
    engine = load_engine(bundle, EngineOptions(provider="cpu"))
    factory, costs = load_factory(bundle, engine)
    prompt_ids = engine.tokenizer.encode(chat_prompt(bundle))
    decode(engine, factory, prompt_ids, "schema", 8)  # warm the session and the mask path
    runs: list[ArmRun] = []
    for _ in range(rounds):
        runs += [decode(engine, factory, prompt_ids, arm, tokens) for arm in ARMS]
    return {"bundle": str(bundle), "model": engine.manifest.name,
            "vocab_size": engine.manifest.architecture.vocab_size, "tokens": tokens,
            "rounds": rounds, **costs, "runs": [asdict(r) for r in runs]}


def arm_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    speed = {}
    for arm in ARMS:
        runs = [r for r in result["runs"] if r["arm"] == arm]
        speed[arm] = statistics.median(r["tokens"] / r["decode_s"] for r in runs)
        forward_ms = statistics.median(r["forward_ms"] for r in runs)
        cost_us = statistics.median(r["constraint_us"] for r in runs)
        rows.append([result["model"], arm, f"{speed[arm]:.1f}",
                     f"{speed[arm] / speed['none']:.3f}", f"{forward_ms:.1f}",
                     f"{cost_us:.0f}" if cost_us else "-",
                     f"{cost_us / 1e3 / forward_ms:.2%}" if cost_us else "-"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [bench_bundle(b, args.tokens, args.rounds) for b in args.bundle]
    print(markdown_table(
        ["model", "vocab", "tokenizer build s", "kept MB", "compile ms", "cached compile ms"],
        [[r["model"], str(r["vocab_size"]), f"{r['load_s']:.2f}", f"{r['kept_mb']:.0f}",
          f"{r['compile_ms']:.1f}", f"{r['compile_cached_ms']:.2f}"] for r in results]))
    print()
    print(markdown_table(["model", "arm", "decode tok/s", "vs none", "forward ms",
                          "constraint us/token", "of a forward"],
                         [row for r in results for row in arm_rows(r)]))
    for r in results:
        first = {run["arm"]: run["text"] for run in reversed(r["runs"])}
        print(f"\n{r['model']} greedy, no constraint: {first['none']!r}")
        print(f"{r['model']} greedy, schema:        {first['schema']!r}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
