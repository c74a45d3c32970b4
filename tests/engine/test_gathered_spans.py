"""The loader finds the tables that gather nodes read a row at a time, in the data file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle.onnx_refs import gathered_spans

onnx = pytest.importorskip("onnx")


def _save(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(256, 16), "table")
    weight = numpy_helper.from_array(np.ones((16, 1024), dtype=np.float32), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"]),
            helper.make_node("MatMul", ["rows", "weight"], ["out"]),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 1024])],
        [weight, table],
    )
    model = helper.make_model(graph)
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    return path


def test_the_gathered_table_and_only_it(tmp_path: Path) -> None:
    path = _save(tmp_path)
    (span,) = gathered_spans(path)
    assert span.location == "model.onnx.data"
    assert span.length == 256 * 16 * 4
    data = (tmp_path / span.location).read_bytes()[span.offset : span.offset + span.length]
    assert np.array_equal(np.frombuffer(data, np.float32), np.arange(4096, dtype=np.float32))


def test_a_model_with_its_weights_inline_has_no_spans(tmp_path: Path) -> None:
    path = _save(tmp_path)
    model = onnx.load(str(path))  # reads the data back in
    inline = tmp_path / "inline.onnx"
    onnx.save_model(model, str(inline))
    assert gathered_spans(inline) == []
