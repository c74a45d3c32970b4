"""Runners: one class per graph kind, each owning the KV cache of the sequences it runs.

The generation loop talks only to :class:`DecoderRunner`; which class runs a bundle is
chosen by ``manifest.graph.kind`` through :data:`RUNNERS`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class DecoderRunner(Protocol):
    """Feed tokens to one sequence, get the next-token logits back."""

    @property
    def max_length(self) -> int:
        """How many tokens (prompt and generated) the cache can hold."""
        ...

    @property
    def length(self) -> int:
        """How many tokens are in the cache now."""
        ...

    def reset(self) -> None:
        """Forget the sequence; the next ``forward`` starts a new one."""
        ...

    def forward(self, token_ids: np.ndarray) -> np.ndarray:
        """Append ``token_ids`` (int64, shape [n]) and return float32 logits [vocab] for the last."""
        ...
