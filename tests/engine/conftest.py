"""Engine test fixtures: tiny bundles of each graph kind, loaded engines shared per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.bundle import read_manifest
from edge_runtime.engine import EngineOptions, OnnxEngine, load_engine


@pytest.fixture(scope="session")
def kind_bundle(
    converter_cache: Path, tiny_hf_model: Callable[..., Path], tiny_bundle: Callable[..., Path]
) -> Callable[..., Path]:
    """Return a factory: ``kind_bundle(arch, graph)`` -> a tiny fp32 bundle of that graph kind.

    The converter's default graph for llama/qwen2 is "gqa", so that one is the shared
    ``tiny_bundle``; other kinds are converted here.
    """
    built: dict[tuple[str, str], Path] = {}

    def make(arch: str = "llama", graph: str = "optimum") -> Path:
        key = (arch, graph)
        if key not in built and graph == "gqa":
            built[key] = tiny_bundle(arch, "fp32")
            assert read_manifest(built[key]).graph.kind == "gqa"
        if key not in built:
            out = converter_cache / f"bundle-tiny-{arch}-fp32-{graph}"
            if not (out / "manifest.json").is_file():
                from converters import ConvertOptions, convert

                options = ConvertOptions(quant="fp32", graph=graph, overwrite=True)  # type: ignore[arg-type]
                convert(tiny_hf_model(arch), out, options)
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_engine(kind_bundle: Callable[..., Path]) -> Callable[..., OnnxEngine]:
    """Return a factory: ``tiny_engine(arch, graph)`` -> a loaded engine, one per session."""
    loaded: dict[tuple[str, str], OnnxEngine] = {}

    def make(arch: str = "llama", graph: str = "optimum") -> OnnxEngine:
        key = (arch, graph)
        if key not in loaded:
            loaded[key] = load_engine(kind_bundle(arch, graph), EngineOptions(provider="cpu"))
        return loaded[key]

    return make
