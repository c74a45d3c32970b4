"""Weight quantization of any ONNX decoder graph (optimum's or the gqa builder's).

int8: ONNX Runtime dynamic quantization. int4: ONNX Runtime's MatMulNBits quantizer for the
MatMuls and GatherBlockQuantized for the embedding, after untying a shared lm_head.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from converters.errors import ExportError
from converters.export.graph_edit import untie_lm_head
from converters.onnx_io import save_model
from converters.options import ConvertOptions
from edge_runtime.bundle import Quantization

WEIGHT_OPS = ("MatMul", "Gather")


def _excluded(model: Any, patterns: tuple[str, ...]) -> list[str]:
    """Names of weight nodes matching any ``keep_fp32`` pattern (by node or input name)."""
    if not patterns:
        return []
    return [
        node.name
        for node in model.graph.node
        if node.op_type in WEIGHT_OPS
        and any(p in node.name or any(p in i for i in node.input) for p in patterns)
    ]


def unquantized_weights(model: Any) -> list[str]:
    """Names of float initializers still read by a MatMul or Gather."""
    from onnx import TensorProto

    floats = {
        init.name
        for init in model.graph.initializer
        if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    }
    found = {
        name
        for node in model.graph.node
        if node.op_type in WEIGHT_OPS
        for name in node.input[:2]
        if name in floats
    }
    return sorted(found)


def _int4(model: Any, options: ConvertOptions, exclude: list[str]) -> Any:
    """MatMuls and the embedding Gather to int4 blocks in ``options.int4_scheme``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from converters.int4_affine import quantize_matmuls_affine

    affine = options.int4_scheme == "affine"
    ops = ("Gather",) if affine else WEIGHT_OPS
    if affine:
        model = quantize_matmuls_affine(
            model,
            block_size=options.block_size,
            accuracy_level=options.accuracy_level,
            exclude=set(exclude),
        )
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=options.block_size,
        is_symmetric=options.int4_scheme != "asymmetric",
        accuracy_level=options.accuracy_level,
        nodes_to_exclude=exclude,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer.process()
    return quantizer.model.model


def _int8(src: Path, dst: Path, exclude: list[str]) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's advice to pre-process is logged on the root logger
    try:
        _quantize_dynamic(src, dst, exclude)
    finally:
        root.setLevel(level)


def _quantize_dynamic(src: Path, dst: Path, exclude: list[str]) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=list(WEIGHT_OPS),
        per_channel=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        use_external_data_format=False,
        # Contrib ops (GroupQueryAttention, ...) defeat shape inference; their outputs are float.
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
    )


def quantize(src: Path, dst: Path, options: ConvertOptions) -> Quantization:
    """Quantize the fp32 model at ``src`` into ``dst`` as ``options.quant`` says."""
    import onnx

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    model = onnx.load(str(src), load_external_data=True)
    if options.quant == "fp32":
        save_model(model, dst)
        return Quantization(method="none", bits=32, unquantized=["all"])
    untie_lm_head(model)
    exclude = _excluded(model, options.keep_fp32)
    try:
        if options.quant == "int4":
            model = _int4(model, options, exclude)
            save_model(model, dst)
        else:
            untied = dst.parent / "untied.onnx"
            save_model(model, untied, external=True)
            del model
            _int8(untied, dst, exclude)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise ExportError(f"{options.quant} quantization failed: {exc}") from exc
    result = onnx.load(str(dst), load_external_data=False)
    left = unquantized_weights(result)
    if options.quant == "int4":
        return Quantization(
            method="int4_matmul_nbits",
            bits=4,
            block_size=options.block_size,
            accuracy_level=options.accuracy_level,
            symmetric=options.int4_scheme == "symmetric",
            unquantized=left,
        )
    return Quantization(method="int8_dynamic", bits=8, symmetric=True, unquantized=left)
