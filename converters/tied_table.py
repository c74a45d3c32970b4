"""One quantized table for a tied embedding and lm_head.

SmolLM2, Qwen2.5-0.5B and other small models use the embedding matrix as the lm_head too.
The export materializes the head's weight (:func:`untie_lm_head`, the gqa builder), so the
bundle would hold the table twice: as the head's ``MatMulNBits`` blocks and again as the
embedding's ``GatherBlockQuantized`` table, 68 MB of int4 data for Qwen2.5-0.5B. When the
two are still one matrix after export (up to a GGUF's rounding), the embedding gathers rows
of the head's packed blocks instead. Only the scales are stored twice: the gather wants them
with the data's rank, and ``MatMulNBits`` refuses that shape.

The rows are then the head's rounding (calibrated for the logits, not for the embedding).
docs/bundle.md has what that did to the quality figures of SmolLM2 and Qwen2.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TIED_TOLERANCE = 0.25
"""Largest relative (Frobenius) difference at which a table and a head count as one matrix."""


def _attr(node: Any, name: str, default: int = 0) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


SOFT_CAP_OPS = ("Div", "Tanh", "Mul")
"""Ops between a head and the logits when they are soft-capped (Gemma 2: cap * tanh(x / cap))."""


def head_node(model: Any, op_type: str) -> Any | None:
    """The ``op_type`` node that writes a graph output (the logits), directly or through a
    soft cap, if there is one."""
    producers = {out: n for n in model.graph.node for out in n.output}
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in SOFT_CAP_OPS:
            node = producers.get(node.input[0])
        if node is not None and node.op_type == op_type:
            return node
    return None


def tied_embedding(model: Any) -> str | None:
    """Name of the embedding ``Gather`` whose float table is the lm_head weight transposed.

    "Is" allows for a GGUF source, which stores a tied matrix twice, rounded to two types
    (Qwen2.5-Coder-0.5B's Q4_K_M file: Q5_0 and Q8_0, 4.4 % apart); two matrices that were
    never one are about 140 % apart. Call before quantization, on a graph whose lm_head is a
    ``MatMul`` over an initializer.
    """
    from onnx import numpy_helper

    head = head_node(model, "MatMul")
    inits = {i.name: i for i in model.graph.initializer}
    if head is None or head.input[1] not in inits:
        return None
    weight = inits[head.input[1]]
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if (table is None or _attr(node, "axis") != 0
                or list(table.dims) != list(reversed(weight.dims))):
            continue
        rows = numpy_helper.to_array(table)
        difference = np.linalg.norm(rows - numpy_helper.to_array(weight).T)
        if difference <= TIED_TOLERANCE * np.linalg.norm(rows):
            return str(node.name)
    return None


def share_head_table(model: Any, gather: str) -> bool:
    """Replace the float ``Gather`` named ``gather`` by a gather of the head's blocks.

    Only when the head is a ``MatMulNBits`` of 4 or 8 bits without zero points whose blocks
    cover the hidden size exactly; returns whether the graph was changed.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    head = head_node(model, "MatMulNBits")
    node = next((n for n in graph.node if n.name == gather and n.op_type == "Gather"), None)
    if head is None or node is None or len([i for i in head.input if i]) != 3:
        return False
    if _rank(graph, node.input[1]) != 2:  # the Reshape below restores [batch, seq, hidden]
        return False
    bits, block, k = _attr(head, "bits"), _attr(head, "block_size"), _attr(head, "K")
    inits = {i.name: i for i in graph.initializer}
    packed, scales = inits[head.input[1]], inits[head.input[2]]
    rows, blocks = packed.dims[0], packed.dims[1]
    if bits not in (4, 8) or blocks * block != k:
        return False
    row_scales = numpy_helper.from_array(
        numpy_helper.to_array(scales).reshape(rows, blocks, 1), f"{scales.name}.rows")
    shape = numpy_helper.from_array(np.array([0, 0, k], np.int64), f"{node.name}.row_shape")
    gathered = f"{node.output[0]}.blocks"
    replacement = [
        helper.make_node("GatherBlockQuantized", [packed.name, node.input[1], row_scales.name],
                         [gathered], name=f"{node.name}_shared", domain="com.microsoft",
                         bits=bits, block_size=block, gather_axis=0, quantize_axis=2),
        helper.make_node("Reshape", [gathered, shape.name], list(node.output),
                         name=f"{node.name}_shared/Reshape"),
    ]
    index = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(replacement):
        graph.node.insert(index + offset, new)
    graph.initializer.extend([row_scales, shape])
    _drop_unused(graph, node.input[0])
    return True


def _rank(graph: Any, name: str) -> int | None:
    """Rank of the graph input ``name`` (the token ids), if it is one."""
    value = next((v for v in graph.input if v.name == name), None)
    return len(value.type.tensor_type.shape.dim) if value is not None else None


def _drop_unused(graph: Any, name: str) -> None:
    if any(name in n.input for n in graph.node):
        return
    for init in list(graph.initializer):
        if init.name == name:
            graph.initializer.remove(init)
