"""verify_bundle refuses a tampered, incomplete or escaping bundle, naming the file at fault."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from converters.writer import file_entries, write_manifest
from edge_runtime.bundle import read_manifest, verify_bundle
from edge_runtime.errors import BundleError


@pytest.fixture
def bundle_copy(tmp_path: Path, tiny_bundle: Callable[..., Path]) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("llama", "int4"), out)
    return out


def _names(bundle: Path) -> list[str]:
    return sorted(read_manifest(bundle).files)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_bundle_lists_every_file_and_verifies(bundle_copy: Path) -> None:
    names = _names(bundle_copy)
    on_disk = sorted(p.name for p in bundle_copy.iterdir() if p.name != "manifest.json")
    assert names == on_disk
    assert {"model.onnx", "tokenizer.json", "generation.json", "chat_template.jinja"} <= set(names)
    verify_bundle(bundle_copy)


def test_each_tampered_file_is_named(bundle_copy: Path) -> None:
    for name in _names(bundle_copy):
        original = (bundle_copy / name).read_bytes()
        _flip_byte(bundle_copy / name)
        with pytest.raises(BundleError) as err:
            verify_bundle(bundle_copy)
        assert err.value.path == bundle_copy / name
        (bundle_copy / name).write_bytes(original)
    verify_bundle(bundle_copy)


def test_each_missing_file_is_named(bundle_copy: Path) -> None:
    for name in _names(bundle_copy):
        moved = bundle_copy.parent / f"moved-{name}"
        (bundle_copy / name).rename(moved)
        with pytest.raises(BundleError) as err:
            verify_bundle(bundle_copy)
        assert err.value.path == bundle_copy / name
        moved.rename(bundle_copy / name)


def test_missing_manifest_is_not_a_bundle(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle_copy)
    assert err.value.path == bundle_copy / "manifest.json"


def _resave_external(bundle: Path, location: str) -> None:
    """Store the weights as external data at ``location`` and re-sign the manifest."""
    import onnx

    model = onnx.load(str(bundle / "model.onnx"))
    onnx.save_model(
        model,
        str(bundle / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )
    _resign(bundle)


def _resign(bundle: Path) -> None:
    """Rewrite the manifest's file list for the files now in ``bundle``."""
    manifest = read_manifest(bundle)
    (bundle / "manifest.json").unlink()
    write_manifest(bundle, replace(manifest, files=file_entries(bundle)))


def test_external_data_inside_the_bundle_loads(bundle_copy: Path) -> None:
    import onnxruntime as ort

    _resave_external(bundle_copy, "model.onnx.data")
    manifest = verify_bundle(bundle_copy)
    assert "model.onnx.data" in manifest.files
    ort.InferenceSession(str(bundle_copy / "model.onnx"), providers=["CPUExecutionProvider"])


def test_external_data_pointing_outside_is_refused(bundle_copy: Path) -> None:
    import onnx

    _resave_external(bundle_copy, "weights.data")
    outside = bundle_copy.parent / "elsewhere"
    outside.mkdir()
    (bundle_copy / "weights.data").rename(outside / "weights.data")
    # onnx refuses to write '..' itself, so edit the locations in the protobuf directly.
    model = onnx.load(str(bundle_copy / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere/weights.data"
    (bundle_copy / "model.onnx").write_bytes(model.SerializeToString())
    _resign(bundle_copy)
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle_copy)
    assert err.value.path == bundle_copy / "model.onnx"
    assert "outside" in str(err.value)
