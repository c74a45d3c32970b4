"""Runners: one class per graph kind, each owning the KV caches of the sequences it runs.

The scheduler talks only to :class:`KvSlots`; which class runs a bundle is chosen by
``manifest.graph.kind`` through :data:`RUNNERS`. A runner holds up to ``slots`` sequences,
in slots ``0 .. slots-1``; one forward advances a contiguous range of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

    from edge_runtime.bundle.manifest import Manifest


class KvSlots(Protocol):
    """The KV caches of up to :attr:`slots` sequences sharing one ONNX Runtime session."""

    max_slots: ClassVar[int]
    """The most sequences this graph kind can run in one forward."""

    @property
    def slots(self) -> int:
        """How many sequences this instance holds."""
        ...

    @property
    def max_length(self) -> int:
        """How many tokens (prompt and generated) one slot can hold."""
        ...

    @property
    def chunk(self) -> int:
        """The most prompt tokens one forward should take for one sequence."""
        ...

    def fit(self, length: int) -> None:
        """Size the caches for sequences of up to ``length`` tokens; every slot must be idle."""
        ...

    def reserve(self, length: int) -> None:
        """Make room for ``length`` tokens in every slot, keeping what the slots hold."""
        ...

    def run(
        self, start: int, tokens: np.ndarray, lengths: np.ndarray, *, settle: bool = False
    ) -> np.ndarray:
        """Append ``tokens`` [n, seq] to slots ``start .. start+n``; return logits [n, vocab].

        ``lengths`` [n] are the tokens each slot holds before the call. Several tokens at once
        are taken for one row only (a prompt). The logits are valid until the next call.
        ``settle`` hands memory a long prompt made the session grow back afterwards.
        """
        ...

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` cached tokens of slot ``src`` into slot ``dst``."""
        ...


class RunnerClass(Protocol):
    """A :class:`KvSlots` class: its batching limit and how it is built from a session."""

    max_slots: int

    def __call__(
        self,
        session: ort.InferenceSession,
        manifest: Manifest,
        *,
        slots: int = 1,
        device: str = "cpu",
        device_id: int = 0,
    ) -> KvSlots: ...


def _registry() -> dict[str, RunnerClass]:
    from edge_runtime.engine.runners.gqa import GqaSlots
    from edge_runtime.engine.runners.optimum import OptimumSlots

    return {"optimum": OptimumSlots, "gqa": GqaSlots}


RUNNERS: dict[str, RunnerClass] = _registry()
"""Graph kind (``manifest.graph.kind``) -> runner class."""
