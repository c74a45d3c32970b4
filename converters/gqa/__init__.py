"""The fast graph: a decoder built around com.microsoft GroupQueryAttention.

``supports(model_type)`` says whether an architecture can be built; ``export(hf_dir,
out_dir, max_length=...)`` writes an fp32 ``model.onnx`` (+ ``model.onnx.data``) into
``out_dir`` and returns the :class:`GraphSpec` the runtime's ``gqa`` runner reads. The
converter quantizes the MatMuls afterwards like any other graph.
"""

from __future__ import annotations

from pathlib import Path

from edge_runtime.bundle.manifest import GraphSpec

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def supports(model_type: str) -> bool:
    """Return True when ``model_type`` (a HF ``config.model_type``) has a gqa builder."""
    from converters.gqa.families import ARCHITECTURES

    return model_type in ARCHITECTURES


def graph_spec() -> GraphSpec:
    """Return the input/output layout every gqa graph has."""
    return GraphSpec(kind="gqa", position_ids=None, logits_last_only=True)


def export(hf_dir: Path, out_dir: Path, *, max_length: int) -> GraphSpec:
    """Build the fp32 gqa graph of the HF model in ``hf_dir`` into ``out_dir``."""
    import onnx

    from converters.errors import UnsupportedArchitecture
    from converters.gqa.families import ARCHITECTURES
    from converters.gqa.weights import decoder_config, read_config

    raw = read_config(Path(hf_dir))
    cfg = decoder_config(raw)
    if cfg.model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(f"no gqa graph builder for {cfg.model_type!r}")
    model = ARCHITECTURES[cfg.model_type](Path(hf_dir), cfg, raw, max_length).build()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_FILE).unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(out / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    return graph_spec()
