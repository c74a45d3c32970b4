"""``convert``: source -> normalized HF folder -> fp32 ONNX -> quantized ONNX -> bundle."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from converters import __version__
from converters.errors import MissingExtra, SourceError, UnsupportedArchitecture
from converters.options import ConvertOptions
from converters.progress import Progress, silent, step
from converters.sources import PreparedSource, open_source
from converters.writer import (
    check_output,
    file_entries,
    move_into_place,
    now_utc,
    os_error,
    staging_dir,
    write_json,
    write_manifest,
)
from edge_runtime.bundle import GraphSpec, Manifest, Quantization, verify_bundle

REQUIRED_MODULES = ("torch", "transformers", "optimum.exporters.onnx", "onnx", "gguf")


def require_extra() -> None:
    """Raise MissingExtra naming the install command if a converter dependency is absent."""
    import importlib.util

    for module in REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise MissingExtra(module.split(".")[0])


def _load_config(hf_dir: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(hf_dir), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise SourceError(f"{hf_dir}: cannot read the model config ({exc})") from exc


def _tokenizer_json(hf_dir: Path, work: Path, trust_remote_code: bool) -> Path:
    """Return a tokenizer.json for the model, converting a slow tokenizer if needed."""
    path = hf_dir / "tokenizer.json"
    if path.is_file():
        return path
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{hf_dir}: no usable tokenizer ({exc})") from exc
    out = work / "tokenizer"
    tok.save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise SourceError(f"{hf_dir}: tokenizer cannot be saved as tokenizer.json")
    return out / "tokenizer.json"


def _calibration_ids(hf_dir: Path, work: Path, options: ConvertOptions) -> list[int]:
    """Tokenize the built-in calibration text with the model's own tokenizer."""
    from tokenizers import Tokenizer

    from converters.calibration import TEXT

    tokenizer = Tokenizer.from_file(str(_tokenizer_json(hf_dir, work, options.trust_remote_code)))
    return list(tokenizer.encode(TEXT.read_text(encoding="utf-8")).ids)


def _write_files(
    stage: Path,
    model_files: list[Path],
    prepared: PreparedSource,
    work: Path,
    context: int,
    trust_remote_code: bool,
) -> bool:
    """Copy the model and write the side files; return whether a chat template was written."""
    from converters import metadata
    from converters.calibration import TEXT
    from converters.tokenizer_file import write_tokenizer

    for src in model_files:
        shutil.copyfile(src, stage / src.name)
    hf_dir = prepared.hf_dir
    tokenizer = _tokenizer_json(hf_dir, work, trust_remote_code)
    write_tokenizer(tokenizer, stage / "tokenizer.json", TEXT.read_text(encoding="utf-8"))
    write_json(stage / "generation.json", metadata.generation_defaults(hf_dir, context))
    template = metadata.chat_template(hf_dir, prepared)
    if template:
        (stage / "chat_template.jinja").write_text(template, encoding="utf-8")
    return template is not None


def _export(graph: str, model_type: str, hf_dir: Path, max_length: int, work: Path,
            options: ConvertOptions, progress: Progress) -> tuple[Path, GraphSpec]:
    """Write the fp32 graph; under ``--graph auto`` a variant the gqa builder refuses (an
    unknown rope scaling, say) goes to the generic optimum export, with a warning."""
    from converters.export import choose_graph, export_graph

    try:
        return export_graph(graph, hf_dir, work / "fp32", max_length=max_length,
                            trust_remote_code=options.trust_remote_code)
    except UnsupportedArchitecture as exc:
        if options.graph != "auto" or graph != "gqa":
            raise
        try:
            fallback = choose_graph("optimum", model_type)
        except UnsupportedArchitecture:
            raise exc from None  # the fast graph's reason is the one that tells what to change
        message = f"the fast gqa graph cannot build this model ({exc}); using the {fallback} graph"
        logging.getLogger(__name__).warning(message)
        progress(message)
        shutil.rmtree(work / "fp32", ignore_errors=True)
        return export_graph(fallback, hf_dir, work / "fp32", max_length=max_length,
                            trust_remote_code=options.trust_remote_code)


def _check_inputs(model_path: Path, spec: GraphSpec, model_type: str) -> None:
    """Refuse a graph without the inputs its runner feeds (optimum exports Gemma without
    ``position_ids``), rather than write a bundle the runtime will not load."""
    import onnx

    names = {i.name for i in onnx.load(str(model_path), load_external_data=False).graph.input}
    wanted = [n for n in (spec.input_ids, spec.attention_mask, spec.position_ids) if n]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise UnsupportedArchitecture(
            f"the {spec.kind} export of {model_type!r} has no {', '.join(missing)} input, "
            "which the runtime feeds; this model cannot be converted with that graph"
        )


def _build(
    source: str | Path, out_dir: Path, options: ConvertOptions, progress: Progress, work: Path
) -> Manifest:
    from converters import metadata
    from converters.export import choose_graph
    from converters.onnx_io import check_model
    from converters.quantize import quantize

    src = open_source(source)
    with step(progress, "load"):
        prepared = src.prepare(work, trust_remote_code=options.trust_remote_code)
        config = _load_config(prepared.hf_dir, options.trust_remote_code)
        graph = choose_graph(options.graph, str(config.model_type))
        arch = metadata.architecture(prepared.hf_dir, config, prepared, options.max_context)
    with step(progress, f"export ({graph} graph)"):
        fp32, spec = _export(graph, str(config.model_type), prepared.hf_dir, arch.context_length,
                             work, options, progress)
        _check_inputs(fp32, spec, str(config.model_type))
    calibrated = " with calibrated rounding" if options.calibrated else ""
    with step(progress, f"quantize ({options.quant}{calibrated})"):
        qdir = work / "quantized"
        qdir.mkdir()
        ids = None
        if options.calibrated:  # one prompt, so no longer than the model's context
            ids = _calibration_ids(prepared.hf_dir, work, options)[: arch.context_length]
        quant = quantize(fp32, qdir / "model.onnx", options, ids, progress)
        shutil.rmtree(fp32.parent, ignore_errors=True)
    with step(progress, "write and verify"), staging_dir(out_dir) as stage:
        model_files = [p for p in qdir.iterdir() if p.name.startswith("model.onnx")]
        has_template = _write_files(
            stage, model_files, prepared, work, arch.context_length, options.trust_remote_code
        )
        check_model(stage / "model.onnx")
        manifest = _manifest(out_dir.name, prepared, arch, quant, spec, stage, has_template)
        write_manifest(stage, manifest)
        verify_bundle(stage)
        move_into_place(stage, out_dir)
    return manifest


def _manifest(
    name: str,
    prepared: PreparedSource,
    arch: Any,
    quant: Quantization,
    spec: GraphSpec,
    stage: Path,
    has_template: bool,
) -> Manifest:
    return Manifest(
        name=name,
        source=prepared.facts,
        architecture=arch,
        quantization=quant,
        graph=spec,
        files=file_entries(stage),
        converter_version=__version__,
        created=now_utc(),
        chat_template_file="chat_template.jinja" if has_template else None,
    )


def convert(
    source: str | Path,
    out_dir: str | Path,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Convert ``source`` (HF folder, hub id or .gguf) into a verified bundle at ``out_dir``.

    Nothing appears at ``out_dir`` unless the whole bundle was written and verified.
    """
    options = options or ConvertOptions()
    progress = progress or silent
    out = Path(out_dir).expanduser().absolute()
    require_extra()
    if not Path(source).expanduser().exists() and "/" not in str(source):
        raise SourceError(f"{source}: no such file or folder")
    check_output(out, options.overwrite)
    # Scratch goes to the system temp dir ($TMPDIR), so only the bundle itself lands next to OUT.
    work = Path(tempfile.mkdtemp(prefix="edge-runtime-convert-"))
    try:
        return _build(source, out, options, progress, work)
    except OSError as exc:
        raise os_error(exc, Path(exc.filename) if exc.filename else out.parent) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["convert"]
