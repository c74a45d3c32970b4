"""Calibrated int4 scales and the 8-bit lm_head: packing checked by ONNX Runtime's own kernel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from converters.int4_blocks import searched_blocks

PROMPT = "The pump station reports its pressure every ten minutes."


def _plain_scales(grouped: np.ndarray) -> np.ndarray:
    peak = np.take_along_axis(grouped, np.abs(grouped).argmax(-1)[..., None], -1)[..., 0]
    return peak / -8.0


def _dequantize(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """[N, blocks, size/2] nibbles and [N*blocks] scales -> the [K, N] weight they encode."""
    low, high = packed & 15, packed >> 4
    q = np.stack([low, high], axis=-1).reshape(packed.shape[0], packed.shape[1], -1)
    w = (q.astype(np.float32) - 8) * scales.reshape(packed.shape[0], -1)[..., None]
    return w.reshape(packed.shape[0], -1)[:, :k].T


def _weighted_error(w: np.ndarray, approx: np.ndarray, importance: np.ndarray) -> float:
    return float((importance[:, None] * (w - approx) ** 2).sum())


def test_searched_scales_never_lose_to_the_plain_choice() -> None:
    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.02, (96, 40)).astype(np.float32)
    w[5, 3] = 0.3  # an outlier: the plain scale spends the whole grid on it
    importance = rng.gamma(1.0, 1.0, 96)
    packed, scales, zeros = searched_blocks(w, 32, importance)
    assert zeros is None
    grouped = np.ascontiguousarray(w.T).reshape(40, 3, 32)
    plain = _plain_scales(grouped)
    q = np.clip(np.rint(grouped / plain[..., None]), -8, 7)
    plain_w = (q * plain[..., None]).reshape(40, 96).T
    searched_w = _dequantize(packed, scales, 96)
    assert _weighted_error(w, searched_w, importance) < _weighted_error(w, plain_w, importance)
    assert np.abs(searched_w[5, 3] - 0.3) < 0.3 / 16  # the outlier is still represented


def test_onnx_runtime_reads_the_packed_blocks_as_written() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from converters.int4_blocks import quantize_matmuls

    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.05, (64, 24)).astype(np.float32)
    x = rng.normal(0, 1, (3, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 24])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    importance = np.ones(64)
    blocks = searched_blocks(w, 32, importance)
    model = quantize_matmuls(model, lambda node, weight: blocks, block_size=32,
                             accuracy_level=0, exclude=set())
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = x @ _dequantize(blocks[0], blocks[1], 64)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("arch", "graph"), [("qwen2", "gqa"), ("llama", "optimum")])
def test_calibrated_bundle_with_8bit_head_tracks_fp32(
    tmp_path: Path,
    tiny_hf_model: Callable[..., Path],
    tiny_bundle: Callable[..., Path],
    arch: str,
    graph: str,
) -> None:
    import onnx

    from converters import ConvertOptions, convert
    from edge_runtime.engine import EngineOptions, load_engine

    out = tmp_path / "calibrated"
    options = ConvertOptions(quant="int4", graph=graph, calibrate=True, head_bits=8)
    manifest = convert(tiny_hf_model(arch), out, options)
    assert manifest.quantization.calibrated is True
    assert manifest.quantization.head_bits == 8
    assert manifest.quantization.unquantized == []  # the embedding too, as searched int4 blocks
    nodes = onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits")
            for n in nodes if n.op_type == "MatMulNBits"}
    heads = [name for name, b in bits.items() if b == 8]
    assert len(heads) == 1 and "lm_head" in heads[0]
    assert len(bits) > 1 and all(b == 4 for name, b in bits.items() if name not in heads)
    assert [n.op_type for n in nodes].count("GatherBlockQuantized") == 1

    def logits(bundle: Path) -> np.ndarray:
        engine = load_engine(bundle, EngineOptions(provider="cpu", threads=2))
        ids = engine.tokenizer.encode(PROMPT)
        return engine.single_sequence().forward(ids)

    got, ref = logits(out), logits(tiny_bundle(arch, "fp32", graph))
    cosine = float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cosine > 0.95  # int4 on a random 2-layer model: 0.96 to 0.98; a bad layout: ~0


def test_calibration_is_on_by_default_for_symmetric_int4_only() -> None:
    from converters import ConvertOptions

    assert ConvertOptions().calibrated
    assert not ConvertOptions(calibrate=False).calibrated
    assert not ConvertOptions(quant="int8").calibrated
    assert not ConvertOptions(quant="fp32").calibrated
    assert not ConvertOptions(int4_scheme="asymmetric").calibrated


def test_calibration_is_refused_for_grids_it_does_not_search() -> None:
    from converters import ConvertOptions
    from converters.errors import ConverterError

    with pytest.raises(ConverterError, match="symmetric"):
        ConvertOptions(calibrate=True, int4_scheme="affine")
    with pytest.raises(ConverterError, match="head bits"):
        ConvertOptions(head_bits=6)
    with pytest.raises(ConverterError, match="int4 bundles only"):
        ConvertOptions(quant="int8", calibrate=True)


def test_onnx_runtime_gathers_the_searched_embedding_rows_as_written() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from converters.int4_blocks import quantize_gathers

    rng = np.random.default_rng(5)
    table = rng.normal(0, 0.1, (50, 64)).astype(np.float32)
    ids = np.array([[3, 0, 49, 3]], dtype=np.int64)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, 4, 64])],
        [helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel().tolist())],
    )
    model = quantize_gathers(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                             32, set())
    assert [n.op_type for n in model.graph.node] == ["GatherBlockQuantized"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"ids": ids})[0]
    packed, scales, _ = searched_blocks(table.T, 32, np.ones(64))
    expected = _dequantize(packed, scales, 64).T[ids]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    step = np.repeat(np.abs(scales).reshape(50, 2), 32, axis=1)[ids]
    # Within one step of each block (as with plain rounding, a value opposite in sign to the
    # block's peak may lie past the grid's +7 end by up to one step).
    assert np.all(np.abs(got - table[ids]) <= step + 1e-6)
