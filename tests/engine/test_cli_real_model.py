"""The real SmolLM2-135M int4 bundle through the command line: an answer, and bench figures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


def edge_runtime(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def smollm2(smollm2_bundle: Callable[..., Path]) -> Path:
    return smollm2_bundle("int4")


def test_run_answers_a_question(smollm2: Path) -> None:
    proc = edge_runtime(
        "run",
        str(smollm2),
        "What is the capital of France?",
        "--max-tokens",
        "40",
        "--temperature",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "<|im_end|>" not in proc.stdout and "<|im_start|>" not in proc.stdout


def test_run_stop_flag_cuts_the_answer(smollm2: Path) -> None:
    proc = edge_runtime(
        "run",
        str(smollm2),
        "What is the capital of France?",
        "--max-tokens",
        "40",
        "--temperature",
        "0",
        "--stop",
        "Paris",
        "--stats",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" not in proc.stdout
    assert "capital" in proc.stdout.lower()
    assert "finish: stop" in proc.stderr


def test_bench_json_reports_its_figures(smollm2: Path) -> None:
    proc = edge_runtime(
        "bench",
        str(smollm2),
        "--json",
        "--prompt-tokens",
        "32",
        "--new-tokens",
        "8",
        "--runs",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["prompt_tokens"] == 32 and report["new_tokens"] == 8 and report["runs"] == 2
    assert report["quantization"] == "int4_matmul_nbits"
    for key in ("load_s", "prefill_tok_s", "decode_tok_s", "first_token_s", "peak_rss_mb"):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert len(report["per_run"]) == 2


def test_bench_table(smollm2: Path) -> None:
    proc = edge_runtime(
        "bench", str(smollm2), "--prompt-tokens", "16", "--new-tokens", "4", "--runs", "1"
    )
    assert proc.returncode == 0, proc.stderr
    for label in ("prefill", "decode", "time to first token", "peak RSS", "load"):
        assert label in proc.stdout
