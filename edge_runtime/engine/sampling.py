"""Pick the next token from logits: greedy, or sampled with the usual filters.

Order, as in Hugging Face ``generate``: repetition penalty on the raw logits, then
temperature, then top_k, top_p and min_p on the resulting distribution, then a draw from
a seeded numpy ``Generator``. Temperature 0 means greedy (after the repetition penalty).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_FIRST_CANDIDATES = 64  # top_p looks at this many best tokens first, then widens


@dataclass(frozen=True)
class SamplerConfig:
    """Resolved sampling settings (no ``None`` left); 0/1 values switch a filter off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """Make tokens in ``seen`` less likely, in place: positive logits / penalty, negative * it."""
    if penalty == 1.0 or seen.size == 0:
        return
    picked = logits[seen]
    logits[seen] = np.where(picked > 0, picked / penalty, picked * penalty)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - np.max(logits))
    result: np.ndarray = shifted / shifted.sum()
    return result


def top_k_mask(probs: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` most likely tokens (ties at the edge kept too)."""
    if k <= 0 or k >= probs.size:
        return np.ones(probs.size, dtype=bool)
    kth = np.partition(probs, probs.size - k)[probs.size - k]
    keep: np.ndarray = probs >= kth
    return keep


def top_p_mask(probs: np.ndarray, p: float) -> np.ndarray:
    """Keep the fewest most likely tokens whose probabilities add up to at least ``p``."""
    if p >= 1.0:
        return np.ones(probs.size, dtype=bool)
    count = min(_FIRST_CANDIDATES, probs.size)
    while True:
        best = np.argpartition(probs, probs.size - count)[probs.size - count :]
        if count == probs.size or probs[best].sum() >= p:
            break
        count = min(count * 8, probs.size)
    best = best[np.argsort(-probs[best], kind="stable")]
    cumulative = np.cumsum(probs[best])
    # A token stays if the mass before it is still short of p.
    needed = int(np.searchsorted(cumulative, p, side="left")) + 1
    keep = np.zeros(probs.size, dtype=bool)
    keep[best[:needed]] = True
    return keep


def min_p_mask(probs: np.ndarray, min_p: float) -> np.ndarray:
    """Keep tokens at least ``min_p`` times as likely as the most likely one."""
    if min_p <= 0.0:
        return np.ones(probs.size, dtype=bool)
    keep: np.ndarray = probs >= min_p * probs.max()
    return keep


def filtered_distribution(logits: np.ndarray, config: SamplerConfig) -> np.ndarray:
    """Return the probabilities the sampler draws from (after temperature and filters)."""
    probs = softmax(logits.astype(np.float64) / config.temperature)
    probs = _renormalized(probs, top_k_mask(probs, config.top_k))
    probs = _renormalized(probs, top_p_mask(probs, config.top_p))
    return _renormalized(probs, min_p_mask(probs, config.min_p))


def _renormalized(probs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    kept = np.where(keep, probs, 0.0)
    result: np.ndarray = kept / kept.sum()
    return result


class Sampler:
    """Choose tokens for one sequence; remembers what it has seen for the repetition penalty."""

    def __init__(self, config: SamplerConfig, vocab_size: int, history: list[int]) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._seen_mask = np.zeros(vocab_size, dtype=bool)
        self._seen: list[int] = []
        for token in history:
            self.observe(token)

    def observe(self, token: int) -> None:
        """Record a token of the sequence (prompt or generated)."""
        if 0 <= token < self._seen_mask.size and not self._seen_mask[token]:
            self._seen_mask[token] = True
            self._seen.append(token)

    def sample(self, logits: np.ndarray) -> int:
        """Return the next token for ``logits`` [vocab] and remember it."""
        token = self._choose(logits)
        self.observe(token)
        return token

    def _choose(self, logits: np.ndarray) -> int:
        config = self.config
        if config.repetition_penalty != 1.0:
            logits = np.array(logits, dtype=np.float32)
            seen = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))
            apply_repetition_penalty(logits, seen, config.repetition_penalty)
        if config.greedy:
            return int(np.argmax(logits))
        probs = filtered_distribution(logits, config)
        candidates = np.flatnonzero(probs)
        weights = probs[candidates]
        return int(self._rng.choice(candidates, p=weights / weights.sum()))
