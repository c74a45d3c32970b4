"""The convert command end to end: progress, a verified bundle, --force, and a light import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edge_runtime.bundle import verify_bundle
from tests.converter.test_cli_errors import assert_one_error, convert_cli

BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, Block())
from edge_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_convert_writes_a_verified_bundle_with_progress(
    tmp_path: Path, tiny_hf_model: Callable[..., Path]
) -> None:
    out = tmp_path / "bundle"
    result = convert_cli(tiny_hf_model("qwen2"), "-o", out, "--quant", "int4", "--graph", "optimum")
    assert result.returncode == 0, result.stderr
    steps = ("load", "export (optimum graph)", "quantize (int4 with calibrated rounding)",
             "write and verify")
    for step in steps:
        assert f"{step} done" in result.stderr
    assert str(out) in result.stdout and "verified" in result.stdout
    manifest = verify_bundle(out)
    assert manifest.quantization.bits == 4 and manifest.quantization.calibrated
    again = convert_cli(tiny_hf_model("qwen2"), "-o", out, "--quant", "int8", "--force")
    assert again.returncode == 0, again.stderr
    assert verify_bundle(out).quantization.bits == 8
    assert not verify_bundle(out).quantization.calibrated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_cli_parser_does_not_import_torch() -> None:
    code = (
        "import sys; from edge_runtime.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'optimum', 'onnx') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_convert_extra_names_the_install_command(
    tmp_path: Path, tiny_hf_model: Callable[..., Path]
) -> None:
    args = ["convert", str(tiny_hf_model("llama")), "-o", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True
    )
    line = assert_one_error(result, "pip install 'edge-runtime[convert]'")
    assert "torch" in line
    assert not (tmp_path / "out").exists()
