"""Bad input through the real CLI: one clear error line, non-zero exit, nothing that verifies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_runtime.bundle import verify_bundle
from edge_runtime.errors import BundleError


def convert_cli(
    *args: str | Path, timeout: float = 300, offline_env: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HF_HUB_OFFLINE", None)
    if offline_env:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_one_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("edge-runtime: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_nothing_valid(out: Path) -> None:
    """No bundle at ``out`` and no leftover partial folder next to it."""
    if out.exists():
        with pytest.raises(BundleError):
            verify_bundle(out)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []


def test_missing_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert_cli(tmp_path / "no-such-model.gguf", "-o", out)
    assert_one_error(result, "no-such-model.gguf", "no such file")
    assert_nothing_valid(out)


def test_folder_that_is_not_a_model(tmp_path: Path) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    (src / "readme.txt").write_text("not a model")
    out = tmp_path / "out"
    assert_one_error(convert_cli(src, "-o", out), "not a model folder")
    assert_nothing_valid(out)


def test_corrupt_gguf(tmp_path: Path) -> None:
    src = tmp_path / "broken.gguf"
    src.write_bytes(b"GGUF" + os.urandom(4096))
    out = tmp_path / "out"
    assert_one_error(convert_cli(src, "-o", out), "broken.gguf")
    assert_nothing_valid(out)


def test_truncated_gguf(tmp_path: Path, smollm2_gguf: Path) -> None:
    src = tmp_path / "truncated.gguf"
    with open(smollm2_gguf, "rb") as fh:
        src.write_bytes(fh.read(20_000_000))
    out = tmp_path / "out"
    assert_one_error(convert_cli(src, "-o", out), "truncated")
    assert_nothing_valid(out)


def test_unsupported_architecture(tmp_path: Path, tiny_hf_model: Callable[..., Path]) -> None:
    src = tmp_path / "odd-model"
    shutil.copytree(tiny_hf_model("llama"), src)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "bert"
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_one_error(convert_cli(src, "-o", out), "'bert'", "llama", "qwen2")
    assert_nothing_valid(out)


@pytest.mark.parametrize("offline_env", [True, False], ids=["HF_HUB_OFFLINE", "probe"])
def test_hub_id_offline_fails_at_once(tmp_path: Path, offline_env: bool) -> None:
    # Without HF_HUB_OFFLINE the connect probe must notice the hub is unreachable (no hang).
    from converters.sources.hub import hub_reachable

    if not offline_env and hub_reachable():
        pytest.skip("the hub is reachable from here; the offline probe cannot be exercised")
    out = tmp_path / "out"
    result = convert_cli(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "-o", out, timeout=60, offline_env=offline_env
    )
    assert_one_error(result, "HuggingFaceTB/SmolLM2-135M-Instruct", "offline")
    assert_nothing_valid(out)


def test_existing_output_is_not_overwritten(
    tmp_path: Path, tiny_hf_model: Callable[..., Path]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_one_error(convert_cli(tiny_hf_model("llama"), "-o", out), "--force")
    assert (out / "precious.txt").read_text() == "keep me"


def test_unwritable_output_folder(tmp_path: Path, tiny_hf_model: Callable[..., Path]) -> None:
    if os.geteuid() == 0:
        out = Path("/sys/edge-runtime-test/out")  # read-only even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "out"
    assert_one_error(convert_cli(tiny_hf_model("llama"), "-o", out), "not writable")
    assert not out.exists()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: too small for any bundle."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root) to fill a disk")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk(tiny_disk: Path, tiny_hf_model: Callable[..., Path]) -> None:
    out = tiny_disk / "out"
    result = convert_cli(tiny_hf_model("llama"), "-o", out, "--quant", "fp32")
    assert_one_error(result, "no space left")
    assert_nothing_valid(out)
    assert list(tiny_disk.iterdir()) == []
