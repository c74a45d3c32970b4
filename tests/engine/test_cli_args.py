"""``run`` and ``bench`` flags reach the engine as the user wrote them."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.cli import build_parser
from edge_runtime.cli.run import build_request, engine_options
from edge_runtime.errors import BadRequest


def test_run_flags_in_any_order() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "bundle",
            "--raw",
            "Once upon",
            "--max-tokens",
            "5",
            "--stop",
            "\n",
            "--stop",
            "END",
            "--temperature",
            "0.5",
            "--top-p",
            "0.9",
            "--top-k",
            "7",
            "--min-p",
            "0.1",
            "--repetition-penalty",
            "1.2",
            "--seed",
            "3",
            "--threads",
            "1",
            "--provider",
            "cpu",
        ]
    )
    assert args.prompt == "Once upon" and args.raw and args.bundle == Path("bundle")
    params = build_request(args)
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (5, 0.5, 0.9, 7)
    assert (params.min_p, params.repetition_penalty, params.seed) == (0.1, 1.2, 3)
    assert params.stop == ["\n", "END"]
    assert params.prompt == "Once upon" and not params.chat
    options = engine_options(args)
    assert options.threads == 1 and options.provider == "cpu"


def test_unset_sampling_flags_leave_the_bundle_defaults() -> None:
    params = build_request(build_parser().parse_args(["run", "bundle", "Hi"]))
    assert params.temperature is None and params.max_tokens is None and params.stop == []
    assert params.chat


def test_a_bad_flag_value_is_refused_naming_the_flag() -> None:
    args = build_parser().parse_args(["run", "bundle", "Hi", "--top-p", "1.5"])
    with pytest.raises(BadRequest, match="top_p"):
        build_request(args)


def test_bench_defaults() -> None:
    args = build_parser().parse_args(["bench", "bundle", "--json"])
    assert (args.prompt_tokens, args.new_tokens, args.runs, args.json) == (139, 128, 3, True)
