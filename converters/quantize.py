"""Weight quantization of any ONNX decoder graph (optimum's or the gqa builder's).

int8: ONNX Runtime dynamic quantization. int4: MatMulNBits for the MatMuls and
GatherBlockQuantized for the embedding; a lm_head tied to the embedding is untied for
quantizing, and the embedding then gathers the head's blocks (converters.tied_table).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.errors import ExportError
from converters.export.graph_edit import untie_lm_head
from converters.onnx_io import save_model
from converters.options import ConvertOptions
from converters.progress import Progress, silent
from converters.tied_table import head_node, share_head_table, tied_embedding
from edge_runtime.bundle import Quantization

if TYPE_CHECKING:
    from converters.calibration import Calibration
    from converters.int4_blocks import BlockFn

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


def lm_head_node(model: Any) -> str | None:
    """Name of the MatMul that produces the logits (through a soft cap), if there is one."""
    node = head_node(model, "MatMul")
    return None if node is None else str(node.name)


def _nbits(model: Any, bits: int, options: ConvertOptions, exclude: list[str],
           ops: tuple[str, ...], symmetric: bool = True) -> Any:
    """ONNX Runtime's MatMulNBits quantizer over ``ops``, except the ``exclude`` nodes."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=options.block_size,
        is_symmetric=symmetric,
        accuracy_level=options.accuracy_level,
        nodes_to_exclude=exclude,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer.process()
    return quantizer.model.model


def _weight_count(model: Any) -> int:
    inits = {i.name for i in model.graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in inits for n in model.graph.node)


def _calibrated_blocks(calibration: Calibration, size: int, progress: Progress,
                       total: int) -> BlockFn:
    """Error-compensated blocks per MatMul, reporting progress every ~15 s of rounding."""
    from converters.gptq import gptq_blocks
    from converters.int4_blocks import Blocks, searched_blocks

    done, last = 0, time.monotonic()

    def blocks(node: Any, w: np.ndarray) -> Blocks:
        nonlocal done, last
        if node.name in calibration:
            result = gptq_blocks(w, calibration.gram(node.name), size)
        else:
            result = searched_blocks(w, size, np.ones(w.shape[0]))
        done += 1
        if time.monotonic() - last > 15:
            progress(f"calibrated rounding: {done} of {total} weight matrices")
            last = time.monotonic()
        return result

    return blocks


def _int4(model: Any, options: ConvertOptions, exclude: list[str],
          calibration: Calibration | None, progress: Progress) -> Any:
    """MatMuls and the embedding Gather to int4 blocks in ``options.int4_scheme``."""
    from converters.int4_blocks import (
        affine_blocks,
        quantize_gathers,
        quantize_matmuls,
    )

    head = lm_head_node(model)
    tied = tied_embedding(model)
    if tied in exclude:
        tied = None
    if options.head_bits == 8 and head is not None and head not in exclude:
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != head]
        model = _nbits(model, 8, options, others, ("MatMul",))
    size = options.block_size
    block_fn: BlockFn | None = None
    if options.int4_scheme == "affine":
        block_fn = lambda node, w: affine_blocks(w, size)  # noqa: E731
    elif calibration is not None:
        block_fn = _calibrated_blocks(calibration, size, progress, _weight_count(model))
    symmetric = options.int4_scheme != "asymmetric"
    if block_fn is not None:
        model = quantize_matmuls(model, block_fn, block_size=size,
                                 accuracy_level=options.accuracy_level, exclude=set(exclude))
    else:
        model = _nbits(model, 4, options, exclude, ("MatMul",), symmetric)
    if tied is not None and share_head_table(model, tied):
        return model
    if calibration is not None:
        return quantize_gathers(model, size, set(exclude))
    return _nbits(model, 4, options, exclude, ("Gather",), symmetric)


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


def quantize(
    src: Path,
    dst: Path,
    options: ConvertOptions,
    calibration_ids: list[int] | None = None,
    progress: Progress = silent,
) -> Quantization:
    """Quantize the fp32 model at ``src`` into ``dst`` as ``options.quant`` says.

    ``calibration_ids`` (the tokenized calibration text) is needed when ``options.calibrated``.
    """
    import onnx

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    calibration = None
    if options.calibrated:
        from converters.calibration import calibrate

        if not calibration_ids:
            raise ExportError("calibrated int4 needs the tokenized calibration text")
        calibration = calibrate(src, calibration_ids)
    model = onnx.load(str(src), load_external_data=True)
    if options.quant == "fp32":
        save_model(model, dst)
        return Quantization(method="none", bits=32, unquantized=["all"])
    untie_lm_head(model)
    exclude = _excluded(model, options.keep_fp32)
    try:
        if options.quant == "int4":
            model = _int4(model, options, exclude, calibration, progress)
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
            head_bits=options.head_bits,
            calibrated=calibration is not None,
        )
    return Quantization(method="int8_dynamic", bits=8, symmetric=True, unquantized=left)
