"""``edge-runtime run BUNDLE "prompt"``: stream an answer to the terminal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_runtime.cli.shaping import add_shape_arguments, shape_fields
from edge_runtime.engine import (
    EngineOptions,
    GenerationRequest,
    GenerationResult,
    load_engine,
    parse_request,
)
from edge_runtime.engine.options import PROVIDER_CHOICES


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags that choose how a bundle is loaded."""
    group = parser.add_argument_group("engine")
    group.add_argument("--provider", choices=PROVIDER_CHOICES, default="auto")
    group.add_argument(
        "--require", action="store_true", help="fail if the provider is not available"
    )
    group.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    group.add_argument("--device-id", type=int, default=0, help="GPU index")
    group.add_argument(
        "--cache-dir", type=Path, help="keep the optimized graph here for faster starts"
    )
    group.add_argument(
        "--no-spin",
        dest="spin",
        action="store_false",
        help="worker threads sleep between kernels (for cores shared with other busy work)",
    )


def engine_options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(
        provider=args.provider,
        require=args.require,
        threads=args.threads,
        device_id=args.device_id,
        optimized_model_dir=args.cache_dir,
        spin=args.spin,
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (default: the bundle's generation defaults)")
    group.add_argument("--max-tokens", type=int, help="most tokens to generate")
    group.add_argument("--temperature", type=float, help="0 for greedy")
    group.add_argument("--top-p", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--min-p", type=float)
    group.add_argument("--repetition-penalty", type=float)
    group.add_argument("--seed", type=int)
    group.add_argument(
        "--stop", action="append", default=[], help="stop before this text (repeatable)"
    )


SAMPLING_FLAGS = ("max_tokens", "temperature", "top_p", "top_k", "min_p",
                  "repetition_penalty", "seed")


def sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Return the request fields the sampling flags set (unset flags left out)."""
    fields: dict[str, Any] = {
        name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name) is not None
    }
    if args.stop:
        fields["stop"] = list(args.stop)
    return fields


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="answer one prompt with a bundle, streamed to the terminal",
        description="Load BUNDLE and stream the answer to PROMPT (the chat template is applied "
        "unless --raw).",
    )
    parser.add_argument("bundle", type=Path, help="bundle directory")
    # Required, not nargs="?": argparse would otherwise bind an empty prompt to BUNDLE
    # and reject a prompt written after an option (run BUNDLE --raw "text").
    parser.add_argument("prompt", help="the prompt ('-' reads it from stdin)")
    parser.add_argument("--raw", action="store_true", help="plain completion, no chat template")
    parser.add_argument("--system", help="a system message before the prompt (chat only)")
    parser.add_argument("--stats", action="store_true", help="print timings to stderr")
    add_sampling_arguments(parser)
    add_shape_arguments(parser)
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


def build_request(args: argparse.Namespace) -> GenerationRequest:
    """Turn the command line into a request; a bad value is a BadRequest naming the flag."""
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    fields = {**sampling_fields(args), **shape_fields(args)}
    if args.raw:
        return parse_request({"prompt": text, "chat": False, **fields})
    if args.system:
        messages = [{"role": "system", "content": args.system}, {"role": "user", "content": text}]
        return parse_request({"messages": messages, **fields})
    return parse_request({"prompt": text, **fields})


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _think(piece: str) -> None:
    """Show a reasoning model's reasoning dimmed on a terminal, plain otherwise."""
    sys.stderr.write(f"\x1b[2m{piece}\x1b[0m" if sys.stderr.isatty() else piece)
    sys.stderr.flush()


def _print_stats(result: GenerationResult) -> None:
    t, u = result.timings, result.usage
    rate = (u.completion_tokens - 1) / t.decode_s if t.decode_s > 0 else 0.0
    print(
        f"[{u.prompt_tokens} prompt + {u.completion_tokens} new tokens, "
        f"first token {t.first_token_s * 1000:.0f} ms, {rate:.1f} tok/s, "
        f"finish: {result.finish_reason.value}]",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    request = build_request(args)
    engine = load_engine(args.bundle, engine_options(args))
    result = engine.generate(request, on_delta=_write, on_reasoning=_think)
    _write("\n")
    for call in result.tool_calls:
        print(json.dumps(call, ensure_ascii=False))
    if args.stats:
        _print_stats(result)
    return 0
