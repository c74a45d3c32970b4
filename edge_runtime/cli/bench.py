"""``edge-runtime bench BUNDLE``: load time, prefill/decode speed, first token, peak memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_runtime.cli.run import add_engine_arguments, engine_options
from edge_runtime.engine.bench import format_table, measure


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure a bundle's speed and memory",
        description="Greedy generation of --new-tokens after a --prompt-tokens prompt, "
        "median of --runs (after one short warm-up).",
    )
    parser.add_argument("bundle", type=Path, help="bundle directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--prompt-tokens", type=int, default=139)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    add_engine_arguments(parser)
    parser.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> int:
    report = measure(
        args.bundle,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        runs=args.runs,
        options=engine_options(args),
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_table(report))
    return 0
