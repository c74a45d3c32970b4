"""A thin helper over ``onnx.helper`` that collects nodes and initializers as a graph grows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
OPSET = 17


class GraphBuilder:
    """Append nodes and weights; :meth:`model` returns the finished ``ModelProto``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}

    def _unique(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add an initializer and return its name."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const_i64(self, name: str, values: Sequence[int]) -> str:
        return self.weight(name, np.asarray(values, dtype=np.int64))

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        *,
        outputs: int | Sequence[str] = 1,
        domain: str = "",
        **attrs: Any,
    ) -> list[str]:
        """Add one node named ``name``; return its output names (``name/out0``, ...).

        ``outputs`` is a count, or the exact output names (empty string: output unused).
        """
        node_name = self._unique(name)
        if isinstance(outputs, int):
            outs = [f"{node_name}/out{i}" for i in range(outputs)]
        else:
            outs = list(outputs)
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=node_name, domain=domain, **attrs)
        )
        return outs

    def op1(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        """Add a node with one output and return that output's name."""
        return self.op(op_type, inputs, name, **attrs)[0]

    def add_input(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def add_output(self, name: str, elem: int, shape: Sequence[int | str]) -> None:
        """Declare ``name`` (already produced by a node) as a graph output."""
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers
        )
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="edge-runtime")
        model.ir_version = 8
        return model


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
INT32 = TensorProto.INT32
