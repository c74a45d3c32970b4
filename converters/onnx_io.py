"""Save and check ONNX models of any size (external data past the protobuf limit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Protobuf refuses messages of 2 GiB; keep a margin for the graph itself.
SINGLE_FILE_LIMIT = 1_800_000_000


def data_name(model_path: Path) -> str:
    return f"{model_path.name}.data"


def tensor_bytes(model: Any) -> int:
    """Return the bytes held by the model's initializers (inline or external)."""
    total = 0
    for init in model.graph.initializer:
        if init.raw_data:
            total += len(init.raw_data)
        else:
            for entry in init.external_data:
                if entry.key == "length":
                    total += int(entry.value)
    return total


def save_model(model: Any, path: Path, *, external: bool = True) -> list[Path]:
    """Save ``model`` at ``path``, its weights in ``<name>.data`` unless ``external`` is off.

    External data is the default even for small models: ONNX Runtime maps that file instead
    of copying the weights out of the protobuf, which lowers peak memory and load time.
    ``external=False`` past the protobuf limit is refused. Returns every file written.
    """
    import onnx

    if not external and tensor_bytes(model) > SINGLE_FILE_LIMIT:
        raise ValueError("model too large for a single ONNX file; save it with external data")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.parent / data_name(path)
    if data.exists():
        data.unlink()
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def check_model(path: Path) -> None:
    """Run ``onnx.checker`` by path (works past 2 GiB).

    ONNX Runtime registers a few fused ops (SimplifiedLayerNormalization, ...) in the default
    domain that the checker does not know; for those only, ONNX Runtime loading the model
    is the check.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        if "No Op registered for" not in str(exc):
            raise
        _check_with_ort(path)


def _check_with_ort(path: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
