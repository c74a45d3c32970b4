"""Pick the next token from logits: greedy, or sampled with the usual filters.

Order, as in Hugging Face ``generate``: repetition penalty on the raw logits, then
temperature, then top_k, top_p and min_p on the resulting distribution, then a draw from
a seeded numpy ``Generator``. Temperature 0 means greedy (after the repetition penalty).

Every value the request model accepts gives an answer: a temperature below
:data:`MIN_TEMPERATURE` acts as greedy (dividing by it would overflow float32), and extreme
repetition penalties are kept finite, so no distribution ever holds NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_TEMPERATURE = 1e-4
"""Temperatures below this act as greedy."""
_MIN_PENALTY = np.float32(1e-30)  # a penalty of 1e-300 is 0 in float32: x / 0 is inf
_LOGIT_LIMIT = np.float32(1e30)  # softmax of finite values cannot give NaN
_TOP_P_CUTOFFS = (1e-2, 1e-4, 1e-6, 0.0)  # top_p sorts the entries above the first that holds p
_FLOOR = np.float32(-80.0)
_DRAW_BLOCK = 1024


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
        return self.temperature < MIN_TEMPERATURE


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """Make tokens in ``seen`` less likely, in place: positive logits / penalty, negative * it."""
    if penalty == 1.0 or seen.size == 0:
        return
    factor = max(np.float32(penalty), _MIN_PENALTY)
    picked = logits[seen]
    logits[seen] = np.where(picked > 0, picked / factor, picked * factor)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return float32 probabilities for ``logits`` (normalized with a float64 sum)."""
    values = np.asarray(logits, dtype=np.float32)
    probs: np.ndarray = values - values.max()
    # exp(-80) is still a normal float32: no slow denormals, and such tokens are never drawn.
    np.maximum(probs, _FLOOR, out=probs)
    np.exp(probs, out=probs)
    probs *= np.float32(1.0 / probs.sum(dtype=np.float64))
    return probs


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Return the ids of the ``k`` highest scores (ties at the edge kept too)."""
    kth = scores[np.argpartition(scores, scores.size - k)[scores.size - k]]
    return np.flatnonzero(scores >= kth)


def top_p_keep(probs: np.ndarray, p: float) -> np.ndarray:
    """Return positions of the fewest most likely entries whose sum reaches ``p``.

    Only a pool of likely entries is sorted: if the entries above a cut-off already hold
    mass ``p``, the answer lies among them (all others are less likely).
    """
    best_prob = probs.max()
    for ratio in _TOP_P_CUTOFFS:
        pool = np.flatnonzero(probs >= best_prob * ratio)
        if probs[pool].sum(dtype=np.float64) >= p:
            break
    best = pool[np.argsort(-probs[pool], kind="stable")]
    # An entry stays while the mass before it is still short of p.
    cumulative = np.cumsum(probs[best], dtype=np.float64)
    needed = int(np.searchsorted(cumulative, p, side="left")) + 1
    return best[:needed]


def min_p_keep(probs: np.ndarray, min_p: float) -> np.ndarray:
    """Return positions of entries at least ``min_p`` times as likely as the best."""
    return np.flatnonzero(probs >= min_p * probs.max())


def candidates(
    logits: np.ndarray, config: SamplerConfig, allowed: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Return the token ids the sampler may draw and their renormalized probabilities.

    Each filter works on what the previous one kept, renormalized: top_k on the scaled
    logits, then top_p, then min_p on the probabilities. Ids are None when every token is
    still a candidate (positions are then the ids), which saves a gather on big vocabularies.
    ``allowed`` restricts the candidates to those ids first (a constraint's mask).
    """
    scaled = np.asarray(logits, dtype=np.float32) / np.float32(config.temperature)
    ids: np.ndarray | None = None
    if allowed is not None:
        ids, scaled = allowed, scaled[allowed]
    np.clip(scaled, -_LOGIT_LIMIT, _LOGIT_LIMIT, out=scaled)
    if 0 < config.top_k < scaled.size:
        kept = top_k_ids(scaled, config.top_k)
        ids, scaled = (kept if ids is None else ids[kept]), scaled[kept]
    probs = softmax(scaled)
    if config.top_p < 1.0:
        ids, probs = _narrow(ids, probs, top_p_keep(probs, config.top_p))
    if config.min_p > 0.0:
        ids, probs = _narrow(ids, probs, min_p_keep(probs, config.min_p))
    return ids, probs


def _narrow(
    ids: np.ndarray | None, probs: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    kept = probs[keep]
    return (keep if ids is None else ids[keep]), kept / kept.sum(dtype=np.float64)


def draw(probs: np.ndarray, uniform: float) -> int:
    """Return the position where the cumulative sum of ``probs`` passes ``uniform`` of it.

    A full cumulative sum over a 150k vocabulary costs milliseconds a token; block sums
    find the block first, then only that block is summed up.
    """
    starts = np.arange(0, probs.size, _DRAW_BLOCK)
    blocks = np.cumsum(np.add.reduceat(probs, starts), dtype=np.float64)
    target = uniform * blocks[-1]
    block = min(int(np.searchsorted(blocks, target, side="right")), blocks.size - 1)
    target -= blocks[block - 1] if block else 0.0
    inner = np.cumsum(probs[starts[block] : starts[block] + _DRAW_BLOCK], dtype=np.float64)
    position = min(int(np.searchsorted(inner, target, side="right")), inner.size - 1)
    return int(starts[block]) + position


def filtered_distribution(logits: np.ndarray, config: SamplerConfig) -> np.ndarray:
    """Return the full-vocabulary distribution the sampler draws from."""
    ids, probs = candidates(logits, config)
    full = np.zeros(np.asarray(logits).size, dtype=np.float64)
    full[slice(None) if ids is None else ids] = probs
    return full


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

    def sample(self, logits: np.ndarray, *, masked: bool = False) -> int:
        """Return the next token for ``logits`` [vocab] and remember it.

        ``masked``: forbidden tokens hold -inf (a constraint); only the others are drawn.
        """
        token = self._choose(logits, masked)
        self.observe(token)
        return token

    def _choose(self, logits: np.ndarray, masked: bool) -> int:
        config = self.config
        if config.repetition_penalty != 1.0:
            logits = np.array(logits, dtype=np.float32)
            seen = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))
            apply_repetition_penalty(logits, seen, config.repetition_penalty)
        if config.greedy:
            return int(np.argmax(logits))
        allowed = np.flatnonzero(np.isfinite(logits)) if masked else None
        ids, probs = candidates(logits, config, allowed)
        position = draw(probs, self._rng.random())
        return position if ids is None else int(ids[position])
