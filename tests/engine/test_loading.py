"""Loading: refused when tampered, optimized-graph cache reused with the same answers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.engine import EngineOptions, GenerationRequest, load_engine
from edge_runtime.errors import BundleError


def greedy(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_tokens=16, temperature=0.0)


def test_tampered_bundle_is_refused_before_loading(
    kind_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(kind_bundle(), copy)
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx"):
        load_engine(copy)


def test_unknown_graph_kind_is_refused(kind_bundle: Callable[..., Path], tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(kind_bundle(), copy)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"kind": "optimum"', '"kind": "mystery"'))
    with pytest.raises(BundleError, match="mystery"):
        load_engine(copy)


def test_optimized_graph_cache_is_written_then_reused(
    kind_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    options = EngineOptions(provider="cpu", optimized_model_dir=tmp_path / "cache")
    first = load_engine(kind_bundle(), options)
    assert not first.report.optimized_cache_hit
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.onnx").is_file()
    second = load_engine(kind_bundle(), options)
    assert second.report.optimized_cache_hit
    for prompt in ("Hello", "Sensors report"):
        assert second.generate(greedy(prompt)).token_ids == first.generate(greedy(prompt)).token_ids


def test_broken_cache_entry_is_rebuilt(kind_bundle: Callable[..., Path], tmp_path: Path) -> None:
    options = EngineOptions(provider="cpu", optimized_model_dir=tmp_path / "cache")
    load_engine(kind_bundle(), options)
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "model.onnx").write_bytes(b"not a model")
    engine = load_engine(kind_bundle(), options)
    assert not engine.report.optimized_cache_hit
    assert engine.generate(greedy("Hello")).usage.completion_tokens > 0


@pytest.mark.parametrize(("graph", "capacity"), [("gqa", 3), ("optimum", 1)])
def test_max_batch_is_decided_once_at_load(
    kind_bundle: Callable[..., Path], graph: str, capacity: int, caplog: pytest.LogCaptureFixture
) -> None:
    engine = load_engine(kind_bundle("llama", graph), EngineOptions(provider="cpu", max_batch=3))
    assert engine.capacity == engine.info["max_batch"] == capacity
    assert ("runs 1 sequence(s) at a time" in caplog.text) == (capacity == 1)
    assert engine.generate(greedy("Hello")).usage.completion_tokens > 0
    engine.close()


def test_an_onnxruntime_that_crashes_on_the_optimum_graph_is_refused_clearly(
    kind_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.29.0")
    with pytest.raises(BundleError, match=r"onnxruntime>=1\.30"):
        load_engine(kind_bundle("llama", "optimum"), EngineOptions(provider="cpu"))
