"""The prefix cache as the scheduler uses it: start a slot from it, keep a slot in it.

The cache holds only *exact* KV: what reading those tokens as a prompt computes. ONNX
Runtime's int4 matrix product takes another kernel for one row than for several (at
accuracy level 4 it quantizes a single row's activations to int8), so a token's KV differs
with the path: a token read in a forward of two or more tokens gets the same values whatever
the forward's size and start (rows are computed independently), while a token read alone, as
every generated token is, gets others. Hence:

- a sequence starts from the longest cached start of its prompt that leaves the rest to be
  read in forwards of the same kinds as a cold read would (:func:`exact_start`), so a hit
  gives the cold run's logits bit for bit;
- what a sequence keeps is its slot up to :attr:`Sequence.exact`; its generated tokens are
  read again as a prompt (in forwards of at least two tokens) once it ends, while nothing
  else waits, so that a conversation's next turn finds its previous answer too.

Kept: the prompt's whole blocks once it is read, so that a sequence arriving meanwhile with
the same start finds them, and the rest when the sequence ends. A sequence that failed, or
was cancelled before its prompt was read, keeps nothing.

The GroupQueryAttention graph reads and writes each slot's own stretch of the KV buffer (one
``past`` tensor per layer, ``[slots, kv_heads, capacity, head_dim]``, no block table), so a
cached prefix is copied into a slot rather than shared in place; docs/engine.md gives the
cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from edge_runtime.engine.prefix_cache import KvBlocks, PrefixCache
from edge_runtime.engine.runners import KvSlots
from edge_runtime.engine.sequence import Sequence
from edge_runtime.engine.types import FinishReason

log = logging.getLogger(__name__)

READ_AGAIN_CHUNK = 16
"""An answer is read again in forwards of this many tokens, so that a request arriving
meanwhile waits for one short forward at most (the values do not depend on the size)."""


def exact_start(found: int, length: int, chunk: int) -> int:
    """How many of ``found`` cached tokens to use for a prompt of ``length`` tokens.

    A cold read takes the prompt in forwards of ``chunk`` tokens, so only its last token can
    be read alone (when ``length % chunk == 1``). The rest after a hit is read in forwards
    of ``chunk`` from the hit on: its last forward must be a single token exactly when the
    cold read's is.
    """
    found = min(found, length - 1)
    if length % chunk == 1:
        return found if found == length - 1 else found - found % chunk
    if (length - found) % chunk == 1:
        return found - 1
    return found


class SlotCache:
    """Copy cached prefixes into ``slots`` and slots' exact contents into ``cache``."""

    def __init__(self, cache: PrefixCache, slots: KvSlots) -> None:
        if not isinstance(slots, KvBlocks):
            raise TypeError("the prefix cache needs slots that copy KV by position")
        self.cache = cache
        self.slots = slots
        self.blocks: KvBlocks = slots

    def start(self, sequence: Sequence, slot: int) -> None:
        """Fill ``slot`` with the cached start of the sequence's prompt; note how much."""
        ids = sequence.prompt_ids

        def write(start: int, kv: np.ndarray) -> None:
            self.blocks.write(slot, start, kv)

        try:
            found = sum(count for _, count in self.cache.match(ids, len(ids) - 1))
            used = exact_start(found, len(ids), self.slots.chunk)
            used = self.cache.load(ids, used, write)
        except Exception:  # a cache fault costs the hit, not the request
            log.exception("prefix cache: copying a cached prefix failed; reading it instead")
            used = 0
        sequence.length = sequence.cached = sequence.exact = used

    def keep(
        self, sequence: Sequence, slot: int, *, ended: bool, idle: Callable[[], bool]
    ) -> None:
        """Keep the exact part of ``slot``: whole blocks, or all of it once ``ended``.

        An ended sequence's generated tokens are read again first while ``idle()`` holds.
        """
        if sequence.decoding.finish is FinishReason.ERROR:
            return
        if ended and sequence.length < len(sequence.prompt_ids):
            return  # cancelled while its prompt was read
        ids = [*sequence.prompt_ids, *sequence.decoding.tokens][: sequence.length]
        if ended:
            try:
                self._read_again(sequence, slot, ids, idle)
            except Exception:
                log.exception("prefix cache: reading an answer again failed; keeping the rest")
        try:
            self.cache.store(ids[: sequence.exact],
                             lambda start, stop: self.blocks.read(slot, start, stop),
                             partial=ended)
        except Exception:
            log.exception("prefix cache: keeping a prefix failed; the cache is unchanged")

    def _read_again(
        self, sequence: Sequence, slot: int, ids: list[int], idle: Callable[[], bool]
    ) -> None:
        """Make the slot's tail exact by reading it as a prompt, a chunk at a time."""
        start, end, chunk = sequence.exact, len(ids), READ_AGAIN_CHUNK
        if end - start == 1:
            if start == 0:
                return
            start -= 1  # no forward of one token: begin one earlier (its KV comes out the same)
        while start < end and idle():
            count = min(chunk, end - start)
            if end - start - count == 1:
                count -= 1
            tokens = np.asarray(ids[start : start + count], dtype=np.int64)[None, :]
            self.slots.run(slot, tokens, np.array([start], dtype=np.int64))
            start += count
            sequence.exact = start
            self.cache.stats.read_again += count


def slot_cache(slots: KvSlots, budget_mb: float, kind: str) -> SlotCache | None:
    """Return a prefix cache of ``budget_mb`` over ``slots``, or None (off, or no such graph)."""
    if budget_mb <= 0:
        return None
    if not isinstance(slots, KvBlocks):
        log.warning("prefix cache off: a %r graph keeps its KV in ONNX Runtime's own buffers, "
                    "which cannot be copied by position; every prompt is read whole", kind)
        return None
    return SlotCache(PrefixCache(int(budget_mb * 2**20), slots.token_bytes), slots)
