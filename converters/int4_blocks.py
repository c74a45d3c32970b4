"""int4 MatMulNBits weights packed here, for the block grids ONNX Runtime's quantizer lacks.

Two grids:

- ``affine``: GGUF's Q4_1 and k-quant blocks are ``w = d * q + m`` over 32 values. A float
  zero point per block represents them exactly, so a GGUF source survives the trip nearly
  unchanged; ONNX Runtime runs it on a generic path, much slower than the symmetric one.
- ``searched``: the symmetric grid of the fast kernels (``w = d * (q - 8)``), but with each
  block's scale chosen to minimise the output error instead of mapping the largest weight to
  -8. The error of input channel ``k`` is weighted by the mean square of the activations that
  reach it on a calibration text (the larger the activation, the more its weight's rounding
  shows in the output). The candidates include the plain choice, so no block gets worse.
  ``converters.gptq`` runs this search block by block as it rounds a MatMul; the embedding
  table gets it with equal weights, as ``GatherBlockQuantized``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

LEVELS = 15  # 4 bits
# Scales tried per block, as divisors of its largest-magnitude weight. None of them clips
# that weight (|q| <= 8 on the negative side, <= 7 on the positive); -8 is the plain choice.
SEARCH_DIVISORS = np.concatenate([np.linspace(-8.0, -6.5, 16), np.linspace(6.0, 7.0, 5)])
_CHUNK = 4096  # output columns quantized at once (bounds the search's scratch memory)

Blocks = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # packed, scales, float zero points


def by_blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """Return a [K, N] weight as [N, blocks, block_size], zero-padded along K."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.pad(weight.astype(np.float32), ((0, blocks * block_size - k), (0, 0)))
    return padded.T.reshape(n, blocks, block_size)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Pack 4-bit levels [..., 2m] into bytes [..., m], the first of each pair low."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def affine_blocks(weight: np.ndarray, block_size: int) -> Blocks:
    """Quantize a [K, N] weight along K to affine blocks (min/max scaling)."""
    grouped = by_blocks(weight, block_size)
    low, high = grouped.min(axis=-1), grouped.max(axis=-1)
    scale = ((high - low) / LEVELS).astype(np.float32)
    scale[scale == 0] = 1.0
    zero = (-low / scale).astype(np.float32)
    q = np.clip(np.rint(grouped / scale[..., None] + zero[..., None]), 0, LEVELS).astype(np.uint8)
    return pack_nibbles(q), scale.reshape(-1), zero.reshape(-1)


def levels(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Symmetric int4 levels (-8..7) of ``values`` at ``scale`` (broadcast against them)."""
    safe = np.where(scale == 0, 1.0, scale)
    return np.clip(np.rint(values / safe), -8, 7)


def search_scales(blocks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the scale per block [rows, size] minimising the weighted squared error."""
    peak = blocks[np.arange(len(blocks)), np.argmax(np.abs(blocks), axis=1)]
    safe_peak = np.where(peak == 0, 1.0, peak).astype(np.float32)
    best_scale = (peak / -8.0).astype(np.float32)
    best_error = np.full(len(blocks), np.inf, dtype=np.float32)
    work = np.empty(blocks.shape, np.float32)
    for divisor in SEARCH_DIVISORS:
        scale = (peak / divisor).astype(np.float32)
        # In place: levels at this scale, back to weights, weighted squared error.
        np.multiply(blocks, (np.float32(divisor) / safe_peak)[:, None], out=work)
        np.clip(np.rint(work, out=work), -8, 7, out=work)
        work *= scale[:, None]
        work -= blocks
        np.square(work, out=work)
        work *= weights
        error = work.sum(axis=1)
        better = error < best_error
        best_error[better] = error[better]
        best_scale[better] = scale[better]
    return best_scale


def searched_blocks(weight: np.ndarray, block_size: int, importance: np.ndarray) -> Blocks:
    """Quantize a [K, N] weight to symmetric blocks with error-minimising scales.

    ``importance`` [K] weights each input channel's squared rounding error.
    """
    grouped = by_blocks(weight, block_size)
    n, count, size = grouped.shape
    channel = np.pad(importance.astype(np.float32), (0, count * size - len(importance)))
    per_block = np.broadcast_to(channel.reshape(count, size) + 1e-12, (min(n, _CHUNK), count, size))
    packed, scales = [], []
    for start in range(0, n, _CHUNK):
        chunk = grouped[start : start + _CHUNK].reshape(-1, size)
        weights = per_block[: len(chunk) // count].reshape(-1, size)
        scale = search_scales(chunk, weights)
        q = (levels(chunk, scale[:, None]) + 8).astype(np.uint8).reshape(-1, count, size)
        packed.append(pack_nibbles(q))
        scales.append(scale)
    return np.concatenate(packed), np.concatenate(scales), None


BlockFn = Callable[[Any, np.ndarray], Blocks]  # (MatMul node, [K, N] weight) -> blocks


def _matmul_nbits(node: Any, weight: np.ndarray, blocks: Blocks, block_size: int,
                  accuracy_level: int) -> tuple[Any, list[Any]]:
    from onnx import helper, numpy_helper

    packed, scale, zero = blocks
    base = node.input[1]
    tensors = [
        numpy_helper.from_array(packed, f"{base}_Q4"),
        numpy_helper.from_array(scale, f"{base}_scales"),
    ]
    if zero is not None:
        tensors.append(numpy_helper.from_array(zero, f"{base}_zero_points"))
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


def _gather_block_quantized(node: Any, table: np.ndarray, blocks: Blocks,
                            block_size: int) -> tuple[Any, list[Any]]:
    """A GatherBlockQuantized over a [rows, width] table stored as ONNX INT4 (no zero point)."""
    from onnx import TensorProto, helper, numpy_helper

    packed, scale, _ = blocks
    rows, width = table.shape
    base = node.input[0]
    # INT4 nibbles are two's complement: level q - 8 is the unsigned nibble q with bit 3 flipped.
    signed = packed.reshape(rows, -1) ^ np.uint8(0x88)
    data = helper.make_tensor(f"{base}_Q4", TensorProto.INT4, [rows, width], signed.tobytes(),
                              raw=True)
    scales = numpy_helper.from_array(scale.reshape(rows, -1), f"{base}_scales")
    new = helper.make_node(
        "GatherBlockQuantized",
        [data.name, node.input[1], scales.name],
        list(node.output),
        name=f"{node.name}_Q4",
        domain="com.microsoft",
        block_size=block_size,
        gather_axis=0,
        quantize_axis=1,
    )
    return new, [data, scales]


Swap = Callable[[Any, np.ndarray], tuple[Any, list[Any]] | None]  # node, weight -> new node


def _swap_weights(model: Any, op_type: str, weight_input: int, swap: Swap,
                  exclude: set[str]) -> Any:
    """Give ``swap`` every ``op_type`` node whose input ``weight_input`` is a 2-D float
    initializer; install the nodes it returns and drop the initializers they replaced."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    nodes, replaced = [], set()
    for node in graph.node:
        init = inits.get(node.input[weight_input]) if node.op_type == op_type else None
        swapped = None
        if (init is not None and node.name not in exclude
                and init.data_type == TensorProto.FLOAT and len(init.dims) == 2):
            swapped = swap(node, numpy_helper.to_array(init))
        if init is None or swapped is None:
            nodes.append(node)
            continue
        new, tensors = swapped
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


def quantize_gathers(model: Any, block_size: int, exclude: set[str]) -> Any:
    """Replace each row Gather from a 2-D float table (the embedding) by searched int4 blocks.

    Every element of a gathered row goes into the residual stream as it is, so the scales
    minimise the plain squared error.
    """

    def swap(node: Any, table: np.ndarray) -> tuple[Any, list[Any]] | None:
        if next((a.i for a in node.attribute if a.name == "axis"), 0) != 0:
            return None
        # Rows play the part of output columns: blocks run along each row.
        blocks = searched_blocks(table.T, block_size, np.ones(table.shape[1]))
        return _gather_block_quantized(node, table, blocks, block_size)

    return _swap_weights(model, "Gather", 0, swap, exclude)


def quantize_matmuls(
    model: Any, block_fn: BlockFn, *, block_size: int, accuracy_level: int, exclude: set[str]
) -> Any:
    """Replace each MatMul with a 2-D float initializer weight by a MatMulNBits."""

    def swap(node: Any, weight: np.ndarray) -> tuple[Any, list[Any]]:
        blocks = block_fn(node, weight)
        return _matmul_nbits(node, weight, blocks, block_size, accuracy_level)

    return _swap_weights(model, "MatMul", 1, swap, exclude)
