"""Rotary position tables (cos, sin) for GroupQueryAttention's ``do_rotary`` mode."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from converters.errors import UnsupportedArchitecture

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


def rope_type(config: Any) -> str:
    """The config's rope scaling type ("default" when it has none)."""
    scaling = getattr(config, "rope_scaling", None) or {}
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def context_limit(config: Any) -> int | None:
    """The longest context whose positions the static tables compute right, if there is one.

    LongRoPE switches from its short factors to its long ones once a sequence outgrows the
    pretrained context, re-rotating every position; one static table holds the short ones.
    """
    original = getattr(config, "original_max_position_embeddings", None)
    if rope_type(config) == "longrope" and original:
        return int(original)
    return None


def rope_tables(config: Any, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 ``cos`` and ``sin`` of shape ``[max_length, rotary_dim / 2]``.

    ``config`` is the transformers config. The inverse frequencies come from transformers'
    own rope initialisers, so scaled variants (llama3, yarn, linear, longrope's short
    factors) and a partial rotary factor match the PyTorch model exactly.
    """
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kind = rope_type(config)
    if kind not in STATIC_ROPE_TYPES:
        raise UnsupportedArchitecture(f"rope scaling {kind!r} is not supported by the gqa graph")
    inv_freq, scale = ROPE_INIT_FUNCTIONS[kind](config, torch.device("cpu"))
    # Same float32 arithmetic as the PyTorch model, so the tables match it bit for bit.
    positions = torch.arange(max_length, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq.float())
    cos = (angles.cos() * scale).numpy()
    sin = (angles.sin() * scale).numpy()
    return cos, sin


def local_rope_tables(config: Any, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables of Gemma 3's sliding-window layers: ``rope_local_base_freq``, no scaling."""
    local = copy.deepcopy(config)
    local.rope_theta = config.rope_local_base_freq
    local.rope_scaling = {"rope_type": "default"}
    return rope_tables(local, max_length)
