"""A tied embedding gathers the lm_head's quantized blocks: one table in the bundle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.tied_table import share_head_table, tied_embedding

VOCAB, HIDDEN = 50, 64


def _model(table: np.ndarray, head: np.ndarray, ids_shape: tuple[int, ...] = (1, 4)) -> Any:
    """ids -> Gather(table) -> "rows" -> MatMul(head) -> "logits"; both are outputs."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
         helper.make_node("MatMul", ["rows", "head"], ["logits"], name="lm_head")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, list(ids_shape))],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [*ids_shape, HIDDEN]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*ids_shape, VOCAB])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(head, "head")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _head_weight(model: Any) -> np.ndarray:
    """The [VOCAB, HIDDEN] rows the head's MatMulNBits blocks encode (symmetric, no zeros)."""
    from onnx import numpy_helper

    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    bits = next(a.i for a in head.attribute if a.name == "bits")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    packed, scales = inits[head.input[1]], inits[head.input[2]]
    if bits == 4:
        q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(VOCAB, -1).astype(np.float32) - 8
    else:
        q = packed.reshape(VOCAB, -1).astype(np.float32) - 128
    return (q.reshape(VOCAB, -1, 32) * scales.reshape(VOCAB, -1, 1)).reshape(VOCAB, HIDDEN)


def _quantized(bits: int, table: np.ndarray, ids_shape: tuple[int, ...] = (1, 4)) -> Any:
    from converters.int4_blocks import quantize_matmuls, searched_blocks
    from converters.options import ConvertOptions
    from converters.quantize import _nbits

    model = _model(table, np.ascontiguousarray(table.T), ids_shape)
    if bits == 8:
        return _nbits(model, 8, ConvertOptions(), [], ("MatMul",))
    return quantize_matmuls(model, lambda node, w: searched_blocks(w, 32, np.ones(HIDDEN)),
                            block_size=32, accuracy_level=4, exclude=set())


@pytest.mark.parametrize("bits", [4, 8])
def test_embedding_rows_are_the_head_rows_onnx_runtime_computes_with(bits: int) -> None:
    import onnxruntime as ort

    table = np.random.default_rng(11).normal(0, 0.1, (VOCAB, HIDDEN)).astype(np.float32)
    model = _quantized(bits, table)
    assert tied_embedding(_model(table, np.ascontiguousarray(table.T))) == "embed"
    assert share_head_table(model, "embed")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GatherBlockQuantized") == 1 and "Gather" not in ops
    assert "table" not in {i.name for i in model.graph.initializer}  # stored once

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[3, 0, 49, 3]], dtype=np.int64)
    rows, logits = session.run(["rows", "logits"], {"ids": ids})
    weight = _head_weight(model)
    np.testing.assert_allclose(rows[0], weight[ids[0]], rtol=1e-6, atol=1e-7)
    # The head still computes with the same blocks (accuracy level 4 rounds the activations).
    np.testing.assert_allclose(logits[0], rows[0] @ weight.T, rtol=0, atol=0.01)
    assert np.abs(rows[0] - table[ids[0]]).max() < 0.1 * (0.3 if bits == 8 else 1)


def test_two_roundings_of_one_matrix_are_tied_two_matrices_are_not() -> None:
    rng = np.random.default_rng(2)
    table = rng.normal(0, 0.1, (VOCAB, HIDDEN)).astype(np.float32)
    # A GGUF stores a tied matrix twice, rounded to two types (a few percent apart).
    rounded = table + rng.normal(0, 0.005, table.shape).astype(np.float32)
    assert tied_embedding(_model(table, np.ascontiguousarray(rounded.T))) == "embed"
    other = rng.normal(0, 0.1, (VOCAB, HIDDEN)).astype(np.float32)
    assert tied_embedding(_model(table, np.ascontiguousarray(other.T))) is None


def test_a_head_kept_in_float_leaves_the_embedding_alone() -> None:
    table = np.random.default_rng(4).normal(0, 0.1, (VOCAB, HIDDEN)).astype(np.float32)
    model = _model(table, np.ascontiguousarray(table.T))
    assert not share_head_table(model, "embed")
    assert [n.op_type for n in model.graph.node] == ["Gather", "MatMul"]


def test_token_ids_of_another_rank_keep_the_embedding_its_own_table() -> None:
    table = np.random.default_rng(6).normal(0, 0.1, (VOCAB, HIDDEN)).astype(np.float32)
    model = _quantized(4, table, ids_shape=(4,))
    assert not share_head_table(model, "embed")
    assert "Gather" in [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("graph", ["gqa", "optimum"])
def test_tied_model_bundle_holds_one_table(
    graph: str, tiny_bundle: Callable[..., Path]
) -> None:
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(tiny_bundle("qwen2", "int4", graph) / "model.onnx"),
                      load_external_data=False)
    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits"
                and "logits" in n.output)
    gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    assert gather.input[0] == head.input[1]
    vocab = next(i.dims[0] for i in model.graph.initializer if i.name == head.input[1])
    tables = [i.name for i in model.graph.initializer
              if i.dims and i.dims[0] == vocab and i.data_type in (TensorProto.UINT8,
                                                                      TensorProto.INT4)]
    assert tables == [head.input[1]]
