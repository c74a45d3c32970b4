"""Activation statistics of the fp32 graph on a calibration text, for choosing int4 scales.

The text (``data/calibration.txt``, written for this project: field notes, clinic
instructions, Python, shell, JSON, SQL) runs once through the fp32 ONNX model as a single
prompt, every position of it reaching the lm_head. The activations at the input of every
MatMul are kept: their Gram matrix drives the error compensation of ``converters.gptq``,
its diagonal (the mean square of each channel) the scale search of ``converters.int4_blocks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converters.export.graph_edit import LAST_POSITION_SLICE
from converters.gqa.decoder import LAST_POSITION

TEXT = Path(__file__).resolve().parent / "data" / "calibration.txt"


def _feeds(session: Any, ids: list[int], gqa: bool) -> dict[str, np.ndarray]:
    """Inputs for one prompt: a KV buffer as long as the prompt (gqa) or an empty past."""
    count = len(ids)
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        if arg.name == "input_ids":
            feeds[arg.name] = np.asarray([ids], dtype=np.int64)
        elif arg.name == "attention_mask":
            feeds[arg.name] = np.ones((1, count), dtype=np.int64)
        elif arg.name == "position_ids":
            feeds[arg.name] = np.arange(count, dtype=np.int64)[None, :]
        elif arg.name.startswith("past_key_values"):
            heads, head_dim = arg.shape[1], arg.shape[3]
            feeds[arg.name] = np.zeros((1, heads, count if gqa else 0, head_dim), np.float32)
        else:
            raise ValueError(f"calibration does not know how to feed graph input {arg.name!r}")
    return feeds


class Calibration:
    """The activations [tokens, K] that reach each weighted MatMul on the calibration text."""

    def __init__(self, inputs: dict[str, str], activations: dict[str, np.ndarray]):
        self._inputs = inputs  # MatMul node name -> the tensor it reads
        self._activations = activations  # tensor name -> [tokens, K]
        self._last: tuple[str, np.ndarray] | None = None

    def __contains__(self, node: str) -> bool:
        return node in self._inputs

    def gram(self, node: str) -> np.ndarray:
        """Mean outer product [K, K] of ``node``'s input.

        Only the latest one is kept: nodes that read one tensor (q, k and v) come one after
        another, and all of Qwen2.5-0.5B's would hold 4.5 GB.
        """
        from converters.gptq import gram

        tap = self._inputs[node]
        if self._last is None or self._last[0] != tap:
            self._last = (tap, gram(self._activations[tap]))
        return self._last[1]


def _all_positions(model: Any) -> None:
    """Let every position reach the lm_head (the served graph keeps only the last one)."""
    for node in model.graph.node:
        if node.name == LAST_POSITION_SLICE or node.name.startswith(LAST_POSITION):
            del node.input[1:]
            del node.attribute[:]
            node.op_type = "Identity"


def calibrate(model_path: Path, ids: list[int]) -> Calibration:
    """Run ``ids`` through the fp32 graph at ``model_path`` as one prompt, tapping every MatMul."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path), load_external_data=False)
    _all_positions(model)
    # Every MatMul, not only those with an initializer weight: a tied lm_head reads the
    # embedding through a Transpose until the quantizer unties it.
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    taps = sorted({n.input[0] for n in matmuls})
    outputs = {o.name for o in model.graph.output}
    for name in taps:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    gqa = any(n.op_type == "GroupQueryAttention" for n in model.graph.node)
    tapped = model_path.with_name("calibration.onnx")  # beside the weights it points to
    onnx.save(model, str(tapped))
    try:
        session = ort.InferenceSession(str(tapped), providers=["CPUExecutionProvider"])
        values = session.run(taps, _feeds(session, ids, gqa))
    finally:
        tapped.unlink(missing_ok=True)
    activations = {
        name: v.reshape(-1, v.shape[-1]).astype(np.float32)
        for name, v in zip(taps, values, strict=True)
    }
    return Calibration({n.name: n.input[0] for n in matmuls}, activations)
