"""``run`` and ``bench`` flags reach the engine as the user wrote them."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.cli import build_parser
from edge_runtime.cli.run import engine_options, sampling_params


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
    params = sampling_params(args)
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (5, 0.5, 0.9, 7)
    assert (params.min_p, params.repetition_penalty, params.seed) == (0.1, 1.2, 3)
    assert params.stop == ("\n", "END")
    options = engine_options(args)
    assert options.threads == 1 and options.provider == "cpu"


def test_unset_sampling_flags_leave_the_bundle_defaults() -> None:
    params = sampling_params(build_parser().parse_args(["run", "bundle", "Hi"]))
    assert params.temperature is None and params.max_tokens is None and params.stop == ()


def test_bench_defaults() -> None:
    args = build_parser().parse_args(["bench", "bundle", "--json"])
    assert (args.prompt_tokens, args.new_tokens, args.runs, args.json) == (139, 128, 3, True)
