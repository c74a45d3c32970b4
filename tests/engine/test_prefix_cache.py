"""The prefix cache's tree without a model: keys, partial blocks, the byte bound, no half entries.

A fake slot stands for the runner: the "KV" it computes for position ``p`` is a function of
every token up to ``p``, as a transformer's is, so a block copied under the wrong prefix
shows up as wrong values.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from edge_runtime.engine.prefix_cache import BLOCK_TOKENS, PrefixCache

WIDTH = 4  # values per position
TOKEN_BYTES = WIDTH * 4
BLOCK_BYTES = BLOCK_TOKENS * TOKEN_BYTES


def kv_of(ids: Sequence[int]) -> np.ndarray:
    """The fake KV of every position of ``ids``: [1, 1, 1, n, WIDTH], prefix-dependent."""
    values = [zlib.crc32(np.asarray(ids[: p + 1], np.int64).tobytes()) % 100_003
              for p in range(len(ids))]
    column = np.asarray(values, np.float32)[:, None] + np.arange(WIDTH, dtype=np.float32)
    return column[None, None, None]


class FakeSlot:
    """One slot's KV, positions along axis 3 as the gqa runner lays them out."""

    def __init__(self, length: int = 1024) -> None:
        self.kv = np.full((1, 1, 1, length, WIDTH), np.nan, np.float32)
        self.reads = 0

    def prefill(self, ids: Sequence[int]) -> None:
        self.kv[..., : len(ids), :] = kv_of(ids)

    def read(self, start: int, stop: int) -> np.ndarray:
        self.reads += 1
        return self.kv[..., start:stop, :].copy()

    def write(self, start: int, kv: np.ndarray) -> None:
        self.kv[..., start : start + kv.shape[3], :] = kv


def ids_from(seed: int, n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(3, 30_000, n)]


def store(cache: PrefixCache, ids: Sequence[int], *, partial: bool = True) -> int:
    slot = FakeSlot()
    slot.prefill(ids)
    return cache.store(ids, slot.read, partial=partial)


def load(cache: PrefixCache, ids: Sequence[int], limit: int | None = None) -> tuple[int, FakeSlot]:
    """Load the cached start of ``ids`` into a fresh slot; check every value it wrote."""
    slot = FakeSlot()
    found = cache.load(ids, len(ids) - 1 if limit is None else limit, slot.write)
    np.testing.assert_array_equal(slot.kv[..., :found, :], kv_of(ids[:found]))
    assert np.isnan(slot.kv[..., found:, :]).all(), "nothing past the hit is written"
    return found, slot


def test_a_shared_start_is_found_to_the_token_and_one_token_is_left_to_read() -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    system = ids_from(1, 150)
    assert store(cache, [*system, *ids_from(2, 30)]) == 180
    found, _ = load(cache, [*system, *ids_from(3, 25)])
    assert found == 150  # two whole blocks, then 22 tokens of the third
    found, _ = load(cache, system)
    assert found == 149, "the last prompt token is always read, for its logits"
    assert load(cache, ids_from(4, 200))[0] == 0


def test_a_block_is_keyed_by_the_whole_prefix_not_its_own_tokens() -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    block = ids_from(5, BLOCK_TOKENS)
    store(cache, [*ids_from(6, BLOCK_TOKENS), *block, 1])
    # The same 64 tokens at the start, or after another first block, are not that entry.
    assert load(cache, [*block, 1, 2])[0] == 0
    assert load(cache, [*ids_from(7, BLOCK_TOKENS), *block, 1])[0] == 0


def test_a_conversation_turn_finds_the_previous_answer_in_a_partial_block() -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    turn1 = ids_from(8, 100)  # prompt and answer as the slot held them
    store(cache, turn1)
    turn2 = [*turn1, *ids_from(9, 40)]
    assert load(cache, turn2)[0] == 100
    store(cache, turn2)
    # The 36-token leaf is replaced by the block that continues it: no duplicate KV.
    assert cache.tokens == 140
    assert cache.blocks == 3
    assert load(cache, [*turn2, 7])[0] == 140


def test_whole_blocks_only_when_asked() -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    assert store(cache, ids_from(10, 150), partial=False) == 128
    assert cache.tokens == 128


def test_a_stored_prefix_is_read_from_the_slot_once() -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    ids = ids_from(11, 200)
    slot = FakeSlot()
    slot.prefill(ids)
    cache.store(ids, slot.read)
    reads = slot.reads
    assert cache.store(ids, slot.read) == 0
    assert slot.reads == reads


def test_least_recently_used_leaves_go_first_within_the_byte_bound() -> None:
    cache = PrefixCache(5 * BLOCK_BYTES, TOKEN_BYTES)
    a, b, c = ids_from(12, 2 * BLOCK_TOKENS), ids_from(13, 2 * BLOCK_TOKENS), ids_from(14, 128)
    store(cache, a)
    store(cache, b)
    load(cache, [*a, 1])  # a is used again: b is now the least recent
    store(cache, c)  # needs two blocks, one is free
    assert cache.bytes <= cache.budget
    assert load(cache, [*a, 1])[0] == len(a)
    assert load(cache, [*c, 1])[0] == len(c)
    # b lost its leaf, not its first block: a leaf goes before its parent.
    assert load(cache, [*b, 1])[0] == BLOCK_TOKENS
    assert cache.stats.evicted_blocks == 1


def test_the_bound_holds_however_much_is_stored() -> None:
    budget = 7 * BLOCK_BYTES + 100
    cache = PrefixCache(budget, TOKEN_BYTES)
    for seed in range(40):
        store(cache, ids_from(100 + seed, 64 * (1 + seed % 5) + seed))
        assert cache.bytes <= budget
        assert cache.bytes == sum(b.kv.nbytes for b in cache.walk())
        assert cache.tokens == sum(len(b.tokens) for b in cache.walk())
    # What is left is still exact: every cached prefix loads its own values.
    for prefix in cache.prefixes():
        load(cache, [*prefix, 0], limit=len(prefix))


def test_a_prefix_longer_than_the_bound_keeps_its_start() -> None:
    cache = PrefixCache(3 * BLOCK_BYTES, TOKEN_BYTES)
    ids = ids_from(15, 10 * BLOCK_TOKENS)
    assert store(cache, ids) == 3 * BLOCK_TOKENS
    assert load(cache, ids)[0] == 3 * BLOCK_TOKENS


def test_too_small_a_bound_stores_nothing() -> None:
    cache = PrefixCache(BLOCK_BYTES - 1, TOKEN_BYTES)
    assert store(cache, ids_from(16, BLOCK_TOKENS)) == 0
    assert cache.blocks == 0 and cache.bytes == 0


def test_a_failed_copy_leaves_no_half_entry() -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    ids = ids_from(17, 3 * BLOCK_TOKENS)
    slot = FakeSlot()
    slot.prefill(ids)

    def read(start: int, stop: int) -> np.ndarray:
        if start >= BLOCK_TOKENS:
            raise MemoryError("no room for the copy")
        return slot.read(start, stop)

    with pytest.raises(MemoryError):
        cache.store(ids, read)
    assert cache.prefixes() == [tuple(ids[:BLOCK_TOKENS])]
    assert cache.bytes == BLOCK_BYTES
    assert load(cache, ids)[0] == BLOCK_TOKENS


def test_a_lower_bound_evicts_at_once() -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    store(cache, ids_from(18, 5 * BLOCK_TOKENS))
    cache.resize(2 * BLOCK_BYTES)
    assert cache.bytes <= 2 * BLOCK_BYTES
    cache.resize(0)
    assert cache.blocks == 0


def test_hit_rate_counts_prompt_tokens() -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    ids = ids_from(19, 101)
    store(cache, ids)
    load(cache, ids)
    load(cache, ids_from(20, 99))
    stats = cache.stats
    assert (stats.lookups, stats.hits, stats.prompt_tokens, stats.cached_tokens) == (
        2, 1, 200, 100)
    assert stats.hit_rate == pytest.approx(0.5)
