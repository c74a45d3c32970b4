"""Read a Hugging Face model folder: its config and its weights as float32 numpy arrays."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import CorruptSource, SourceError


@dataclass(frozen=True)
class DecoderConfig:
    """The numbers of a llama-style decoder that shape the graph."""

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    context_length: int


def read_config(hf_dir: Path) -> dict[str, Any]:
    """Return ``config.json`` as a dict."""
    path = Path(hf_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: cannot read the model config ({exc})") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path}: not a JSON object")
    return data


def decoder_config(cfg: dict[str, Any]) -> DecoderConfig:
    """Pick the decoder shape out of a HF config dict."""
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_dim = cfg.get("head_dim") or hidden // heads
    return DecoderConfig(
        model_type=str(cfg["model_type"]),
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        vocab_size=int(cfg["vocab_size"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        context_length=int(cfg.get("max_position_embeddings", 2048)),
    )


class Weights:
    """Lazy access to the tensors of every ``*.safetensors`` file in a folder."""

    def __init__(self, hf_dir: Path) -> None:
        from safetensors import safe_open

        files = sorted(Path(hf_dir).glob("*.safetensors"))
        if not files:
            raise SourceError(
                f"{hf_dir}: no *.safetensors weights (convert .bin checkpoints first)"
            )
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}  # noqa: SIM118 (safe_open handles are not dicts)

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> np.ndarray:
        """Return tensor ``name`` as float32 (bf16 and fp16 are widened)."""
        try:
            handle = self._where[name]
        except KeyError as exc:
            raise CorruptSource(f"weight {name!r} is missing from the checkpoint") from exc
        return handle.get_tensor(name).float().numpy()

    def linear(self, name: str) -> np.ndarray:
        """Return a Linear weight ``[out, in]`` transposed for ``MatMul``: ``[in, out]``."""
        return np.ascontiguousarray(self.get(name).T)
