"""Edits on an exported decoder graph: untie the lm_head, compute only the last logits."""

from __future__ import annotations

from typing import Any

import numpy as np

INT64_MAX = np.iinfo(np.int64).max
LAST_POSITION_SLICE = "/lm_head/last_position_slice"


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _initializers(graph: Any) -> dict[str, Any]:
    return {init.name: init for init in graph.initializer}


def untie_lm_head(model: Any) -> list[str]:
    """Give each MatMul that reads a transposed initializer its own materialized weight.

    A tied embedding reaches the lm_head through ``Transpose``; weight-only quantizers skip
    a MatMul whose weight is not an initializer, so the lm_head would stay fp32. Returns the
    names of the weights created.
    """
    from onnx import numpy_helper

    graph = model.graph
    producers, inits = _producers(graph), _initializers(graph)
    created: list[str] = []
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        src = producers.get(node.input[1])
        if src is None or src.op_type != "Transpose" or src.input[0] not in inits:
            continue
        perm = [a.ints for a in src.attribute if a.name == "perm"]
        weight = numpy_helper.to_array(inits[src.input[0]])
        if weight.ndim != 2 or (perm and list(perm[0]) != [1, 0]):
            continue
        name = f"{src.input[0]}.untied_T"
        if name not in inits:
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
            inits[name] = graph.initializer[-1]
            created.append(name)
        node.input[1] = name
    _drop_unused_nodes(graph)
    return created


def _drop_unused_nodes(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    used |= {out.name for out in graph.output}
    for node in list(graph.node):
        if node.op_type == "Transpose" and not any(o in used for o in node.output):
            graph.node.remove(node)


def _logits_matmul(graph: Any, logits: str) -> Any:
    producers = _producers(graph)
    name = logits
    for _ in range(4):  # MatMul, possibly followed by Cast/Add/Mul
        node = producers.get(name)
        if node is None:
            break
        if node.op_type == "MatMul":
            return node
        name = node.input[0]
    raise ValueError(f"no MatMul found feeding {logits!r}")


def slice_last_position(model: Any, logits: str = "logits") -> None:
    """Slice the hidden state to its last position before the lm_head MatMul."""
    from onnx import helper, numpy_helper

    graph = model.graph
    matmul = _logits_matmul(graph, logits)
    hidden = matmul.input[0]
    sliced = f"{hidden}/last_position"
    consts = {
        "last_position/starts": np.array([-1], dtype=np.int64),
        "last_position/ends": np.array([INT64_MAX], dtype=np.int64),
        "last_position/axes": np.array([1], dtype=np.int64),
    }
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    node = helper.make_node(
        "Slice", [hidden, *consts], [sliced], name=LAST_POSITION_SLICE
    )
    index = list(graph.node).index(matmul)
    graph.node.insert(index, node)
    matmul.input[0] = sliced
    for out in graph.output:
        if out.name == logits:
            dim = out.type.tensor_type.shape.dim[1]
            dim.Clear()
            dim.dim_value = 1
