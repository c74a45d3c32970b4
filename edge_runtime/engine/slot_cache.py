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

That holds where a row's KV does not depend on the size of the forward (of two or more
tokens) that reads it, as with ONNX Runtime's x86 kernels. Elsewhere (its aarch64 kernels
treat the rows left over from a group of four apart, so a row read in a forward of 2, 3 or 5
tokens differs from the same row read in a forward of 64) the cache keeps only *whole
blocks*: the ``chunk``-token forwards a cold read makes, from its first token on; a hit
starts at a block boundary, so the rest is read in the cold read's own forwards, and answers
are not read again. :func:`forwards_agree` finds out which holds, once, when the cache is
made.

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


PROBE_SPLIT = (2, 3, 5, 7, 15)
"""How :func:`forwards_agree` reads again the tokens it first reads in one forward: sizes
that leave one, two and three rows over a group of four, at several offsets."""


def forwards_agree(slots: KvSlots, blocks: KvBlocks) -> bool:
    """Whether a row's KV is the same whatever the size of the forward (two or more) reading it.

    Reads ``sum(PROBE_SPLIT)`` tokens into slot 0 in one forward, then again in forwards of
    :data:`PROBE_SPLIT` sizes, and compares the two, bit for bit. Call it with every slot idle.
    """
    count = sum(PROBE_SPLIT)
    ids = np.arange(1, count + 1, dtype=np.int64)[None, :]
    slots.fit(count + 1)
    slots.run(0, ids, np.array([0], dtype=np.int64))
    whole = blocks.read(0, 0, count)
    start = 0
    for size in PROBE_SPLIT:
        slots.run(0, ids[:, start : start + size], np.array([start], dtype=np.int64))
        start += size
    return bool(np.array_equal(blocks.read(0, 0, count), whole))


def exact_start(found: int, length: int, chunk: int, *, whole_blocks: bool = False) -> int:
    """How many of ``found`` cached tokens to use for a prompt of ``length`` tokens.

    A cold read takes the prompt in forwards of ``chunk`` tokens, so only its last token can
    be read alone (when ``length % chunk == 1``). The rest after a hit is read in forwards
    of ``chunk`` from the hit on: its last forward must be a single token exactly when the
    cold read's is. With ``whole_blocks``, the hit ends at a block boundary, so that the
    rest is read in the very forwards a cold read makes.
    """
    found = min(found, length - 1)
    if whole_blocks:
        return found - found % chunk
    if length % chunk == 1:
        return found if found == length - 1 else found - found % chunk
    if (length - found) % chunk == 1:
        return found - 1
    return found


class SlotCache:
    """Copy cached prefixes into ``slots`` and slots' exact contents into ``cache``."""

    def __init__(self, cache: PrefixCache, slots: KvSlots, *, whole_blocks: bool = False) -> None:
        if not isinstance(slots, KvBlocks):
            raise TypeError("the prefix cache needs slots that copy KV by position")
        self.cache = cache
        self.slots = slots
        self.blocks: KvBlocks = slots
        self.whole_blocks = whole_blocks
        cache.stats.whole_blocks = whole_blocks

    def note_read(self, sequence: Sequence, start: int, count: int) -> None:
        """Extend the sequence's exact part after its prompt forward of ``count`` at ``start``."""
        if sequence.exact != start:
            return
        chunk = self.slots.chunk
        if self.whole_blocks:
            if count == chunk and start % chunk == 0:
                sequence.exact = start + count
        elif count > 1:
            sequence.exact = start + count

    def start(self, sequence: Sequence, slot: int) -> None:
        """Fill ``slot`` with the cached start of the sequence's prompt; note how much."""
        ids = sequence.prompt_ids

        def write(start: int, kv: np.ndarray) -> None:
            self.blocks.write(slot, start, kv)

        try:
            found = sum(count for _, count in self.cache.match(ids, len(ids) - 1))
            used = exact_start(found, len(ids), self.slots.chunk,
                               whole_blocks=self.whole_blocks)
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
        if self.whole_blocks:
            return
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
    whole_blocks = not forwards_agree(slots, slots)
    if whole_blocks:
        log.info("prefix cache: on this CPU a row's KV depends on the size of the forward "
                 "that reads it; only whole %d-token blocks are kept, hits start at a block "
                 "boundary and answers are not read again", slots.chunk)
    cache = PrefixCache(int(budget_mb * 2**20), slots.token_bytes)
    return SlotCache(cache, slots, whole_blocks=whole_blocks)
