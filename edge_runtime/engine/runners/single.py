"""One sequence on a runner's slot 0, driven directly: for graph checks and scoring.

Serving goes through the scheduler; this is for code that wants the logits at every step
of a sequence it chooses (perplexity, agreement with a reference, graph tests).
"""

from __future__ import annotations

import numpy as np

from edge_runtime.engine.runners import KvSlots


class SingleSequence:
    """Append tokens to one sequence and get the last token's logits back."""

    def __init__(self, slots: KvSlots) -> None:
        self.slots = slots
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    @property
    def max_length(self) -> int:
        return self.slots.max_length

    def reset(self, expected: int = 0) -> None:
        """Start a new sequence, sized for ``expected`` tokens if known."""
        self._length = 0
        self.slots.fit(expected or 1)

    def forward(self, token_ids: np.ndarray | list[int]) -> np.ndarray:
        """Append ``token_ids`` [n]; return a copy of the last token's float32 logits [vocab]."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("forward() needs at least one token")
        logits = self.slots.run(0, ids, np.array([self._length], dtype=np.int64))
        self._length += ids.shape[1]
        row: np.ndarray = logits[0].copy()
        return row
