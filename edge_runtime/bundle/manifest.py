"""The bundle manifest: the contract between the converter and the runtime.

A bundle is one flat directory. ``manifest.json`` describes the model and lists every other
file with its sha256; the runtime trusts nothing that the manifest does not vouch for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import BundleError

FORMAT = "edge-runtime-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Source:
    """Where the weights came from."""

    kind: str  # "hf_folder" | "hub" | "gguf"
    id: str
    revision: str | None = None
    license: str | None = None
    sha256: str | None = None  # of the source file, when it is one file (GGUF)


@dataclass(frozen=True)
class Architecture:
    """The facts about the network the runtime needs to size its buffers and stop."""

    model_type: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    context_length: int
    eos_token_ids: list[int]
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    add_bos_token: bool = False


@dataclass(frozen=True)
class Quantization:
    """How the weights were stored."""

    method: str  # "none" | "int8_dynamic" | "int4_matmul_nbits"
    bits: int  # 32, 8 or 4
    block_size: int | None = None
    accuracy_level: int | None = None
    symmetric: bool | None = None
    unquantized: list[str] = field(default_factory=list)
    head_bits: int | None = None  # the lm_head's bits when they differ from ``bits``' default
    calibrated: bool = False  # int4 weights rounded against a calibration text's activations


@dataclass(frozen=True)
class GraphSpec:
    """Names and layout of the ONNX graph's inputs and outputs.

    ``kind`` selects the runner: ``"optimum"`` is a decoder exported with past/present
    tensors that grow by concatenation; ``"gqa"`` uses GroupQueryAttention over a
    preallocated KV buffer shared between past and present. ``{layer}`` in a name is
    replaced by the layer index.
    """

    kind: str
    input_ids: str = "input_ids"
    attention_mask: str | None = "attention_mask"
    position_ids: str | None = "position_ids"
    past_key: str = "past_key_values.{layer}.key"
    past_value: str = "past_key_values.{layer}.value"
    present_key: str = "present.{layer}.key"
    present_value: str = "present.{layer}.value"
    logits: str = "logits"
    kv_dtype: str = "float32"
    logits_last_only: bool = False


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` holds."""

    name: str
    source: Source
    architecture: Architecture
    quantization: Quantization
    graph: GraphSpec
    files: dict[str, FileEntry]
    converter_version: str
    created: str
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    generation_file: str = "generation.json"
    chat_template_file: str | None = "chat_template.jinja"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            return cls(
                name=data["name"],
                source=Source(**data["source"]),
                architecture=Architecture(**data["architecture"]),
                quantization=Quantization(**data["quantization"]),
                graph=GraphSpec(**data["graph"]),
                files={k: FileEntry(**v) for k, v in data["files"].items()},
                converter_version=data["converter_version"],
                created=data["created"],
                model_file=data.get("model_file", "model.onnx"),
                tokenizer_file=data.get("tokenizer_file", "tokenizer.json"),
                generation_file=data.get("generation_file", "generation.json"),
                chat_template_file=data.get("chat_template_file"),
                format=data["format"],
                format_version=data["format_version"],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"malformed manifest ({exc})", MANIFEST_NAME) from exc


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse ``manifest.json`` without checking the files it lists."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not Path(bundle_dir).is_dir():
        raise BundleError("not a bundle directory", bundle_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError("missing; this is not a bundle (or it was not finished)", path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"not valid JSON ({exc})", path) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"not an {FORMAT} manifest", path)
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"format version {data.get('format_version')!r} is not supported "
            f"(this runtime reads version {FORMAT_VERSION})",
            path,
        )
    return Manifest.from_dict(data)
