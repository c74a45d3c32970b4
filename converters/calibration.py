"""Activation statistics of the fp32 graph on a calibration text, for choosing int4 scales.

The text (``data/calibration.txt``, written for this project: field notes, clinic
instructions, Python, shell, JSON, SQL) runs once through the fp32 ONNX model as a single
prompt. For every MatMul with a weight, the mean square of each input channel is recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

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


def activation_importance(model_path: Path, ids: list[int]) -> dict[str, np.ndarray]:
    """Return, per MatMul node name, the mean square [K] of its activation input over ``ids``."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path), load_external_data=False)
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
    square = {
        name: np.mean(np.square(v.reshape(-1, v.shape[-1]), dtype=np.float64), axis=0)
        for name, v in zip(taps, values, strict=True)
    }
    return {n.name: square[n.input[0]] for n in matmuls}
