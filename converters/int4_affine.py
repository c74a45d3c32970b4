"""Affine int4 MatMulNBits with float zero points, packed here.

GGUF's Q4_1 and k-quant blocks are affine: ``w = d * q + m`` over 32 values. ONNX Runtime's
quantizer offers a symmetric grid or an integer zero point; neither can represent such a block,
so re-quantizing a GGUF model adds a second rounding on top of the first. A float zero point
per block of 32 does represent it (min/max scaling lands on the same 16 levels), so a GGUF
source survives the trip nearly unchanged. The runtime runs it with the standard
``com.microsoft.MatMulNBits`` kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LEVELS = 15  # 4 bits


def quantize_block_affine(
    weight: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize a [K, N] weight along K; return packed [N, blocks, block/2], scales, zero points."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.pad(weight.astype(np.float32), ((0, blocks * block_size - k), (0, 0)))
    grouped = padded.T.reshape(n, blocks, block_size)
    low, high = grouped.min(axis=-1), grouped.max(axis=-1)
    scale = ((high - low) / LEVELS).astype(np.float32)
    scale[scale == 0] = 1.0
    zero = (-low / scale).astype(np.float32)
    q = np.clip(np.rint(grouped / scale[..., None] + zero[..., None]), 0, LEVELS).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale.reshape(-1), zero.reshape(-1)


def _matmul_nbits(
    node: Any, weight: np.ndarray, block_size: int, accuracy_level: int
) -> tuple[Any, list[Any]]:
    from onnx import helper, numpy_helper

    packed, scale, zero = quantize_block_affine(weight, block_size)
    base = node.input[1]
    tensors = [
        numpy_helper.from_array(packed, f"{base}_Q4"),
        numpy_helper.from_array(scale, f"{base}_scales"),
        numpy_helper.from_array(zero, f"{base}_zero_points"),
    ]
    new = helper.make_node(
        "MatMulNBits",
        [node.input[0], *(t.name for t in tensors)],
        list(node.output),
        name=f"{node.name}_Q4",
        domain="com.microsoft",
        K=weight.shape[0],
        N=weight.shape[1],
        bits=4,
        block_size=block_size,
        accuracy_level=accuracy_level,
    )
    return new, tensors


def quantize_matmuls_affine(
    model: Any, *, block_size: int, accuracy_level: int, exclude: set[str]
) -> Any:
    """Replace each MatMul with a 2-D float initializer weight by an affine MatMulNBits."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    nodes, replaced = [], set()
    for node in graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if (
            init is None
            or node.name in exclude
            or init.data_type != TensorProto.FLOAT
            or len(init.dims) != 2
        ):
            nodes.append(node)
            continue
        new, tensors = _matmul_nbits(node, numpy_helper.to_array(init), block_size, accuracy_level)
        nodes.append(new)
        graph.initializer.extend(tensors)
        replaced.add(init.name)
    still_used = {name for node in nodes for name in node.input}
    keep = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model
