"""Runners: one class per graph kind, each owning the KV cache of the sequences it runs.

The generation loop talks only to :class:`DecoderRunner`; which class runs a bundle is
chosen by ``manifest.graph.kind`` through :data:`RUNNERS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

    from edge_runtime.bundle.manifest import Manifest


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

    def reset(self, expected: int = 0) -> None:
        """Forget the sequence; the next ``forward`` starts a new one.

        ``expected`` is how many tokens the new sequence may reach (0: unknown), so that a
        runner can size its cache for it.
        """
        ...

    def forward(self, token_ids: np.ndarray) -> np.ndarray:
        """Append ``token_ids`` (int64, shape [n]); return float32 logits [vocab] for the last."""
        ...


class RunnerFactory(Protocol):
    """Build the runner for one graph kind from a loaded session and the bundle manifest.

    ``device`` is "cpu" or "cuda": where the runner should keep its KV cache.
    """

    def __call__(
        self,
        session: ort.InferenceSession,
        manifest: Manifest,
        *,
        device: str = "cpu",
        device_id: int = 0,
    ) -> DecoderRunner: ...


def _gqa(
    session: ort.InferenceSession, manifest: Manifest, *, device: str = "cpu", device_id: int = 0
) -> DecoderRunner:
    from edge_runtime.engine.runners.gqa import GqaRunner

    arch = manifest.architecture
    return GqaRunner(session, manifest.graph, arch, arch.context_length)


def _registry() -> dict[str, RunnerFactory]:
    from edge_runtime.engine.runners.optimum import OptimumRunner

    return {
        "optimum": OptimumRunner,
        "gqa": _gqa,
    }


RUNNERS: dict[str, RunnerFactory] = _registry()
"""Graph kind (``manifest.graph.kind``) -> runner class."""
