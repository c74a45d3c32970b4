"""Rotary position tables (cos, sin) for GroupQueryAttention's ``do_rotary`` mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.errors import UnsupportedArchitecture

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


def rope_tables(hf_dir: Path, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 ``cos`` and ``sin`` of shape ``[max_length, rotary_dim / 2]``.

    The inverse frequencies come from transformers' own rope initialisers, so scaled
    variants (llama3, yarn, linear) match the PyTorch model exactly.
    """
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(str(hf_dir))
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in STATIC_ROPE_TYPES:
        raise UnsupportedArchitecture(
            f"rope scaling {rope_type!r} is not supported by the gqa graph"
        )
    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    # Same float32 arithmetic as the PyTorch model, so the tables match it bit for bit.
    positions = torch.arange(max_length, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq.float())
    cos = (angles.cos() * scale).numpy()
    sin = (angles.sin() * scale).numpy()
    return cos, sin
