"""The prefix cache as the scheduler uses it: start a slot from it, keep a slot in it.

A sequence starts with the longest cached start of its prompt copied into its slot, always
leaving at least one prompt token to read (the forward that gives the first logits). What
went through a forward is kept: the prompt's whole blocks once it is read, so that a
sequence arriving meanwhile with the same start finds them, and everything the slot holds
when the sequence ends. A sequence that failed, or was cancelled before its prompt was
read, keeps nothing.

The GroupQueryAttention graph reads and writes each slot's own stretch of the KV buffer (one
``past`` tensor per layer, ``[slots, kv_heads, capacity, head_dim]``, no block table), so a
cached prefix is copied into a slot rather than shared in place; docs/engine.md gives the
cost.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_runtime.engine.prefix_cache import KvBlocks, PrefixCache
from edge_runtime.engine.runners import KvSlots
from edge_runtime.engine.sequence import Sequence
from edge_runtime.engine.types import FinishReason

log = logging.getLogger(__name__)


def slot_cache(slots: KvSlots, budget_mb: float, kind: str) -> SlotCache | None:
    """Return a prefix cache of ``budget_mb`` over ``slots``, or None (off, or no such graph)."""
    if budget_mb <= 0:
        return None
    if not isinstance(slots, KvBlocks):
        log.warning("prefix cache off: a %r graph keeps its KV in ONNX Runtime's own buffers, "
                    "which cannot be copied by position; every prompt is read whole", kind)
        return None
    return SlotCache(PrefixCache(int(budget_mb * 2**20), slots.token_bytes), slots)


class SlotCache:
    """Copy cached prefixes into ``slots`` and slots' contents into ``cache``."""

    def __init__(self, cache: PrefixCache, slots: KvBlocks) -> None:
        self.cache = cache
        self.slots = slots

    def start(self, sequence: Sequence, slot: int) -> None:
        """Fill ``slot`` with the cached start of the sequence's prompt; note how much."""
        ids = sequence.prompt_ids

        def write(start: int, kv: np.ndarray) -> None:
            self.slots.write(slot, start, kv)

        try:
            found = self.cache.load(ids, len(ids) - 1, write)
        except Exception:  # a cache fault costs the hit, not the request
            log.exception("prefix cache: copying a cached prefix failed; reading it instead")
            found = 0
        sequence.length = sequence.cached = found

    def keep(self, sequence: Sequence, slot: int, *, ended: bool) -> None:
        """Keep what ``slot`` holds: the prompt's whole blocks, or all of it once ``ended``."""
        finish = sequence.decoding.finish
        if finish is FinishReason.ERROR or (ended and sequence.length < len(sequence.prompt_ids)):
            return
        ids = [*sequence.prompt_ids, *sequence.decoding.tokens][: sequence.length]
        try:
            self.cache.store(ids, lambda start, stop: self.slots.read(slot, start, stop),
                             partial=ended)
        except Exception:
            log.exception("prefix cache: keeping a prefix failed; the cache is unchanged")
