"""Export: pick the graph builder, write an fp32 ``model.onnx``, apply the graph edits."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from types import ModuleType

from converters.errors import ConverterError, UnsupportedArchitecture
from converters.export.optimum_export import (
    export_optimum,
    optimum_graph_spec,
    supported_model_types,
)
from edge_runtime.bundle import GraphSpec


def load_gqa() -> ModuleType | None:
    """Return ``converters.gqa`` when it is installed and importable, else None."""
    try:
        return importlib.import_module("converters.gqa")
    except ImportError:
        return None


def choose_graph(choice: str, model_type: str) -> str:
    """Resolve ``auto`` to ``gqa`` or ``optimum`` and check the model type is supported."""
    gqa = load_gqa()
    gqa_ok = gqa is not None and bool(gqa.supports(model_type))
    if choice == "gqa" and not gqa_ok:
        why = "is not available" if gqa is None else f"does not support {model_type!r}"
        raise UnsupportedArchitecture(f"the gqa graph builder {why}; use --graph optimum")
    if choice == "auto" and gqa_ok:
        return "gqa"
    if choice in ("auto", "optimum"):
        supported = supported_model_types()
        if model_type not in supported:
            raise UnsupportedArchitecture(
                f"model_type {model_type!r} is not supported; supported: "
                f"{', '.join(sorted(supported))}"
            )
        return "optimum"
    return choice


def export_graph(
    graph: str, hf_dir: Path, out_dir: Path, *, max_length: int, trust_remote_code: bool
) -> tuple[Path, GraphSpec]:
    """Write an fp32 ``model.onnx`` (+ data) into ``out_dir``; return its path and GraphSpec."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if graph == "gqa":
        gqa = load_gqa()
        if gqa is None:
            raise ConverterError("the gqa graph builder is not available")
        spec = gqa.export(hf_dir, out_dir, max_length=max_length)
        return out_dir / "model.onnx", spec
    raw = out_dir / "optimum"
    model_path = export_optimum(hf_dir, raw, trust_remote_code=trust_remote_code)
    edited = _apply_last_position(model_path, out_dir / "model.onnx")
    shutil.rmtree(raw, ignore_errors=True)
    return edited, optimum_graph_spec()


def _apply_last_position(src: Path, dst: Path) -> Path:
    import onnx

    from converters.export.graph_edit import slice_last_position
    from converters.onnx_io import save_model

    model = onnx.load(str(src), load_external_data=True)
    slice_last_position(model)
    save_model(model, dst)
    return dst
