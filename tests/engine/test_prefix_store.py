"""Saving the prefix cache at stop and reading it back at start, for the same key only."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.engine.prefix_cache import PrefixCache
from edge_runtime.engine.prefix_store import cache_key, restore, save
from tests.engine.test_prefix_cache import BLOCK_BYTES, TOKEN_BYTES, ids_from, load, store

KEY = "k" * 64


def filled() -> tuple[PrefixCache, list[list[int]]]:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    prompts = [ids_from(1, 150), [*ids_from(1, 100), *ids_from(2, 90)], ids_from(3, 40)]
    for ids in prompts:
        store(cache, ids)
    return cache, prompts


def test_a_saved_cache_reads_back_whole_and_exact(tmp_path: Path) -> None:
    cache, prompts = filled()
    path = tmp_path / "prefix-cache.bin"
    assert save(cache, path, KEY) == cache.blocks
    assert not list(tmp_path.glob("*.tmp"))
    back = PrefixCache(1 << 20, TOKEN_BYTES)
    assert restore(back, path, KEY) == cache.blocks
    assert sorted(back.prefixes()) == sorted(cache.prefixes())
    assert (back.bytes, back.tokens) == (cache.bytes, cache.tokens)
    for ids in prompts:
        assert load(back, [*ids, 0])[0] == len(ids)  # load() checks every value


def test_another_key_or_a_damaged_file_is_not_used(tmp_path: Path) -> None:
    cache, prompts = filled()
    path = tmp_path / "prefix-cache.bin"
    save(cache, path, KEY)
    back = PrefixCache(1 << 20, TOKEN_BYTES)
    store(back, prompts[2])
    before = back.prefixes()
    assert restore(back, path, "another bundle") == 0
    path.write_bytes(path.read_bytes()[:-100])
    assert restore(back, path, KEY) == 0
    path.write_bytes(b"not a cache")
    assert restore(back, path, KEY) == 0
    assert back.prefixes() == before, "a file that is not used changes nothing"
    assert restore(back, tmp_path / "missing.bin", KEY) == 0


def test_a_smaller_bound_reads_back_what_fits(tmp_path: Path) -> None:
    cache = PrefixCache(1 << 20, TOKEN_BYTES)
    ids = ids_from(4, 5 * 64)
    store(cache, ids)
    path = tmp_path / "prefix-cache.bin"
    save(cache, path, KEY)
    small = PrefixCache(2 * BLOCK_BYTES, TOKEN_BYTES)
    assert restore(small, path, KEY) == 2
    assert small.bytes <= small.budget
    assert load(small, ids)[0] == 2 * 64


def test_the_key_follows_the_bundle(tmp_path: Path) -> None:
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text('{"name": "a", "files": {"model.onnx": {"sha256": "1"}}}')
    two.write_text('{"name": "a", "files": {"model.onnx": {"sha256": "2"}}}')
    assert cache_key(one) == cache_key(one)
    assert cache_key(one) != cache_key(two)
