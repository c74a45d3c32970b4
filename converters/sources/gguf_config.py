"""What transformers' GGUF loader leaves out of a model's config, read back from the GGUF.

transformers (< 4.58) maps a fixed set of ``{arch}.*`` keys into the config and skips the
rest, and it skips tensors it has no weight for. For the families below those skipped facts
change what the network computes: a head size other than hidden / heads (Qwen3), soft caps
and the query scale (Gemma), the sliding-window layout and rope scaling (Gemma 3), the
rotary part and LongRoPE factors (Phi-3), llama3 rope scaling stored as a ``rope_freqs``
tensor (Llama 3.x). :func:`config_fixes` reads them from the file; what it finds and cannot
carry into a transformers config is refused, never dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import UnsupportedArchitecture
from converters.sources.gguf_meta import GGUFMeta

# Layers of the 27B Gemmas: llama.cpp scales their queries by hidden / heads, not head size.
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
# Every rope scaling type llama.cpp writes; "none" and "linear" are all that carry over.
SCALING_TYPES = ("none", "linear", "yarn", "longrope")


def _tensor(path: Path, name: str) -> np.ndarray | None:
    """The small float tensor ``name`` of the GGUF at ``path``, if it has one."""
    from gguf import GGUFReader, dequantize

    for tensor in GGUFReader(str(path)).tensors:
        if tensor.name == name:
            return np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float64).ravel()
    return None


def config_fixes(meta: GGUFMeta) -> dict[str, Any]:
    """Config fields (transformers names) the GGUF sets and transformers' loader does not."""
    arch = meta.architecture
    if arch == "llama" and meta.get("general.name") == "mistral":
        # transformers takes exactly this name for a "mistral" architecture, which its gguf
        # package has no tensor names for.
        raise UnsupportedArchitecture(
            f"{meta.path}: a llama GGUF named 'mistral' cannot be loaded by transformers; "
            "set another general.name (gguf_set_metadata.py) and convert again"
        )
    a = f"{arch}."
    fixes: dict[str, Any] = {}
    key_length = meta.get(a + "attention.key_length")
    if key_length and arch != "phi3":  # Phi-3's attention takes hidden / heads, always
        fixes["head_dim"] = int(key_length)
    fixes.update(_rope_scaling(meta, arch))
    if arch in ("gemma2", "gemma3"):
        fixes.update(_gemma(meta, arch))
    if arch == "phi3":
        fixes.update(_phi3(meta))
    if arch == "llama":
        fixes.update(_llama3(meta))
    return fixes


def _rope_scaling(meta: GGUFMeta, arch: str) -> dict[str, Any]:
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind is None or kind == "none" or (arch == "phi3" and kind in ("longrope", "su")):
        return {}
    if kind != "linear":
        raise UnsupportedArchitecture(
            f"{meta.path}: rope scaling {kind!r} in a GGUF is not carried over by the loader; "
            "convert the model's Hugging Face folder instead"
        )
    return {"rope_scaling": {"rope_type": "linear",
                             "factor": float(meta.get(f"{arch}.rope.scaling.factor", 1.0))}}


def _gemma(meta: GGUFMeta, arch: str) -> dict[str, Any]:
    a = f"{arch}."
    hidden, heads = int(meta.get(a + "embedding_length")), int(meta.get(a + "attention.head_count"))
    head_dim = int(meta.get(a + "attention.key_length") or hidden // heads)
    big = meta.get(a + "block_count") == GEMMA_27B_LAYERS[arch]
    fixes: dict[str, Any] = {"query_pre_attn_scalar": hidden // heads if big else head_dim}
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        fixes[key] = meta.get(a + key)
    if arch == "gemma3":
        fixes.pop("attn_logit_softcapping")
        if meta.get(a + "rope.freq_base_swa") is not None:
            fixes["rope_local_base_freq"] = float(meta.get(a + "rope.freq_base_swa"))
        pattern = meta.get(a + "attention.sliding_window_pattern")
        if pattern is not None:
            fixes["layer_types"] = _layer_types(pattern, int(meta.get(a + "block_count")))
    return fixes


def _layer_types(pattern: Any, layers: int) -> list[str]:
    """Sliding or full per layer from llama.cpp's pattern: a period, or a flag per layer."""
    if isinstance(pattern, (list, tuple)):
        flags = [bool(p) for p in pattern]
    else:
        flags = [bool((i + 1) % int(pattern)) for i in range(layers)]
    return ["sliding_attention" if f else "full_attention" for f in flags]


def _phi3(meta: GGUFMeta) -> dict[str, Any]:
    hidden = int(meta.get("phi3.embedding_length"))
    heads = int(meta.get("phi3.attention.head_count"))
    fixes: dict[str, Any] = {"sliding_window": meta.get("phi3.attention.sliding_window")}
    rotary = meta.get("phi3.rope.dimension_count")
    if rotary:
        fixes["partial_rotary_factor"] = int(rotary) / (hidden // heads)
    long, short = _tensor(meta.path, "rope_factors_long.weight"), _tensor(
        meta.path, "rope_factors_short.weight")
    if long is not None and short is not None:
        original = meta.get("phi3.rope.scaling.original_context_length")
        if original is None:
            raise UnsupportedArchitecture(
                f"{meta.path}: LongRoPE factors without the original context length")
        fixes["original_max_position_embeddings"] = int(original)
        fixes["rope_scaling"] = {"type": "longrope", "short_factor": short.tolist(),
                                 "long_factor": long.tolist()}
    return fixes


def _llama3(meta: GGUFMeta) -> dict[str, Any]:
    """llama3 rope scaling, rebuilt from the divisors llama.cpp stores in ``rope_freqs``."""
    divisors = _tensor(meta.path, "rope_freqs.weight")
    if divisors is None:
        return {}
    dim = int(meta.get("llama.rope.dimension_count") or (
        int(meta.get("llama.embedding_length")) // int(meta.get("llama.attention.head_count"))))
    base = float(meta.get("llama.rope.freq_base", 10000.0))
    scaling = _llama3_parameters(divisors, base, dim)
    if scaling is None or not _same_frequencies(scaling, divisors, base, dim):
        raise UnsupportedArchitecture(
            f"{meta.path}: its rope_freqs tensor is not llama3 rope scaling as transformers "
            "computes it; convert the model's Hugging Face folder instead"
        )
    return {"rope_scaling": scaling}


def _llama3_parameters(divisors: np.ndarray, base: float, dim: int) -> dict[str, Any] | None:
    """Factor, band edges and original context that give ``divisors``, or None.

    Between the bands each divisor is ``1 / ((1 - s) / factor + s)`` with ``s`` linear in
    ``1 / wavelength``; only the ratios of the three edges show, so the low edge is taken
    as 1, as Llama 3 sets it.
    """
    factor = float(divisors.max())
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    medium = (divisors > 1 + 1e-6) & (divisors < factor * (1 - 1e-6))
    if factor <= 1 or medium.sum() < 2 or len(divisors) != len(inv):
        return None
    smooth = (1 / divisors[medium] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(inv[medium] / (2 * math.pi), smooth, 1)
    high = 1 - 1 / intercept
    original = slope * (high - 1)
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": float(high),
            "original_max_position_embeddings": round(original)}


def _same_frequencies(scaling: dict[str, Any], divisors: np.ndarray, base: float,
                      dim: int) -> bool:
    """Whether transformers' llama3 frequencies from ``scaling`` are the GGUF's."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=dim, num_attention_heads=1, head_dim=dim,
                         rope_theta=base, rope_scaling=scaling)
    ours, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    theirs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim) / divisors
    return bool(np.allclose(ours.double().numpy(), theirs, rtol=1e-5, atol=0))
