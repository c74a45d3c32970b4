"""Export a decoder with KV cache through optimum-onnx."""

from __future__ import annotations

import logging
from pathlib import Path

from converters.errors import ExportError
from edge_runtime.bundle import GraphSpec

TASK = "text-generation-with-past"
_SEQ2SEQ = {
    "bart",
    "bigbird_pegasus",
    "blenderbot",
    "blenderbot-small",
    "marian",
    "mbart",
    "pegasus",
}


def supported_model_types() -> set[str]:
    """Model types optimum exports as a decoder with past, and transformers loads as causal LM."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the configs)
    from optimum.exporters.tasks import TasksManager
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    found = {
        model_type.replace("-", "_")
        for model_type, backends in TasksManager._SUPPORTED_MODEL_TYPE.items()
        if TASK in backends.get("onnx", {})
    }
    return (found - _SEQ2SEQ) & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def export_optimum(hf_dir: Path, out_dir: Path, *, trust_remote_code: bool = False) -> Path:
    """Export ``hf_dir`` into ``out_dir`` and return the path of the fp32 ``model.onnx``."""
    from optimum.exporters.onnx import main_export

    logging.getLogger("optimum").setLevel(logging.ERROR)
    try:
        main_export(
            str(hf_dir),
            str(out_dir),
            task=TASK,
            do_validation=False,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            library_name="transformers",
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ExportError(f"optimum export failed: {exc}") from exc
    model = out_dir / "model.onnx"
    if not model.is_file():
        raise ExportError(f"optimum export wrote no model.onnx into {out_dir}")
    return model


def optimum_graph_spec() -> GraphSpec:
    """Return the input/output layout of an optimum decoder after the last-position slice."""
    return GraphSpec(kind="optimum", logits_last_only=True)
