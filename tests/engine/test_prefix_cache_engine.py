"""The prefix cache in the engine, on tiny real bundles: a hit answers as a cold run does.

A hit copies cached KV into the slot and reads only the rest of the prompt, so the first
logits come from a forward over fewer tokens than a cold run's: they agree to rounding, and
greedy answers are the same. A cancelled or failed prompt leaves nothing in the cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.engine import EngineOptions, OnnxEngine, load_engine
from edge_runtime.engine.prefix_cache import BLOCK_TOKENS
from edge_runtime.engine.request import Sampling
from edge_runtime.engine.types import FinishReason
from tests.fixtures.prefix import reusable, whole_blocks
from tests.fixtures.threads import wall_limit

GREEDY = Sampling(max_tokens=24, temperature=0.0)


def ids_from(seed: int, n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(3, 250, n)]


SYSTEM = ids_from(1, 150)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def engines(
    request: pytest.FixtureRequest, kind_bundle: Callable[..., Path]
) -> Iterator[tuple[OnnxEngine, OnnxEngine]]:
    """A cold engine and one with a prefix cache, on the same tiny gqa bundle."""
    bundle = kind_bundle(request.param, "gqa")
    cold = load_engine(bundle, EngineOptions(provider="cpu", threads=1))
    cached = load_engine(bundle, EngineOptions(provider="cpu", threads=1, prefix_cache_mb=4))
    yield cold, cached
    cold.close()
    cached.close()


def test_a_hit_answers_as_a_cold_run(engines: tuple[OnnxEngine, OnnxEngine]) -> None:
    cold, cached = engines
    first = cached.generate_ids([*SYSTEM, *ids_from(2, 20)], GREEDY)
    assert first.usage.cached_tokens < len(SYSTEM)
    for seed in (3, 4):
        prompt = [*SYSTEM, *ids_from(seed, 20)]
        hit = cached.generate_ids(prompt, GREEDY)
        assert hit.usage.cached_tokens >= reusable(cached, len(SYSTEM))
        assert hit.token_ids == cold.generate_ids(prompt, GREEDY).token_ids


def test_a_conversation_reads_only_its_new_turn(engines: tuple[OnnxEngine, OnnxEngine]) -> None:
    cold, cached = engines
    prompt = [*SYSTEM[:40], *ids_from(5, 10)]
    history = list(prompt)
    asked = 0
    for turn in range(3):
        answer = cached.generate_ids(history, GREEDY)
        # The next turn comes after the answer was read (a kiosk's user types): by then the
        # engine has kept the answer, which it reads again only while nothing else waits.
        assert cached.scheduler.wait_idle(wall_limit(10))
        assert answer.token_ids == cold.generate_ids(history, GREEDY).token_ids
        if turn:
            # All but the new turn and the previous answer's last token (never fed); with
            # whole blocks, the previous prompt's whole blocks (answers are not read again).
            assert answer.usage.cached_tokens >= (
                asked - asked % BLOCK_TOKENS if whole_blocks(cached) else len(history) - 12 - 1)
        asked = len(history)
        history += [*answer.token_ids, *ids_from(10 + turn, 12)]


@pytest.mark.parametrize("question", [30, 43, 1, 65])
def test_first_logits_are_a_cold_reads_bit_for_bit(
    engines: tuple[OnnxEngine, OnnxEngine], question: int
) -> None:
    """The runner level: copied blocks plus the rest, read as a cold read would, give its logits.

    43 tokens make a prompt whose cold read ends with a one-token forward; after 1 and 65 the
    rest would end with one unless the hit gives a token back.
    """
    from edge_runtime.engine.prefix_cache import PrefixCache
    from edge_runtime.engine.runners.gqa import GqaSlots
    from edge_runtime.engine.slot_cache import exact_start, forwards_agree

    cold, _ = engines
    slots = cold.new_slots(2)
    assert isinstance(slots, GqaSlots)
    cache = PrefixCache(1 << 22, slots.token_bytes)
    prompt = [*SYSTEM, *ids_from(6, question)]

    def read(slot: int, ids: list[int], start: int) -> np.ndarray:
        for first in range(start, len(ids), slots.chunk):
            chunk = ids[first : first + slots.chunk]
            logits = slots.run(slot, np.asarray([chunk]), np.array([first])).copy()
        return logits

    whole_blocks = not forwards_agree(slots, slots)
    slots.fit(len(prompt) + 1)
    want = read(0, prompt, 0)
    other = [*SYSTEM, *ids_from(7, 30)]
    read(1, other, 0)
    cache.store(other, lambda a, b: slots.read(1, a, b))
    found = sum(count for _, count in cache.match(prompt, len(prompt) - 1))
    assert found == len(SYSTEM)
    used = cache.load(prompt, exact_start(found, len(prompt), slots.chunk,
                                          whole_blocks=whole_blocks),
                      lambda start, kv: slots.write(0, start, kv))
    assert used >= len(SYSTEM) - slots.chunk
    np.testing.assert_array_equal(read(0, prompt, used), want)


class CancelAfter(threading.Event):
    """A cancel flag that reads as set from its ``n``-th check on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.checks, self.n = 0, n

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


def test_a_prompt_cancelled_while_read_leaves_nothing(
    engines: tuple[OnnxEngine, OnnxEngine],
) -> None:
    _, cached = engines
    prompt = ids_from(20, 3 * BLOCK_TOKENS + 5)
    # Checked once on admission, then before each chunk: the third chunk is never read.
    result = cached.generate_ids(prompt, GREEDY, cancel=CancelAfter(4))
    assert result.finish_reason is FinishReason.CANCELLED
    assert cached.generate_ids(prompt, GREEDY).usage.cached_tokens == 0


def test_a_failed_prompt_leaves_nothing(
    engines: tuple[OnnxEngine, OnnxEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    cold, cached = engines
    prompt = ids_from(21, 3 * BLOCK_TOKENS + 5)
    slots = cached.scheduler.slots
    run = slots.run

    def failing(start: int, tokens: np.ndarray, lengths: np.ndarray, **kw: bool) -> np.ndarray:
        if int(lengths[0]) >= 2 * BLOCK_TOKENS:
            raise RuntimeError("kernel fault")
        return run(start, tokens, lengths, **kw)

    monkeypatch.setattr(slots, "run", failing)
    with pytest.raises(Exception, match="kernel fault"):
        cached.generate_ids(prompt, GREEDY)
    monkeypatch.setattr(slots, "run", run)
    again = cached.generate_ids(prompt, GREEDY)
    assert again.usage.cached_tokens == 0
    assert again.token_ids == cold.generate_ids(prompt, GREEDY).token_ids


def test_a_copy_that_fails_costs_the_hit_not_the_answer(
    engines: tuple[OnnxEngine, OnnxEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    cold, cached = engines
    prompt = [*SYSTEM, *ids_from(22, 10)]
    cached.generate_ids(prompt, GREEDY)

    def broken(slot: int, start: int, kv: np.ndarray) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(cached.scheduler.slots, "write", broken)
    answer = cached.generate_ids(prompt, GREEDY)
    assert answer.usage.cached_tokens == 0
    assert answer.token_ids == cold.generate_ids(prompt, GREEDY).token_ids


def test_an_optimum_graph_runs_without_a_cache(
    kind_bundle: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_runtime")
    engine = load_engine(kind_bundle("llama", "optimum"),
                         EngineOptions(provider="cpu", threads=1, prefix_cache_mb=4))
    try:
        assert engine.prefix_cache is None
        assert "prefix cache off" in caplog.text
        prompt = ids_from(23, 80)
        engine.generate_ids(prompt, GREEDY)
        assert engine.generate_ids(prompt, GREEDY).usage.cached_tokens == 0
    finally:
        engine.close()


def test_a_sequence_finds_the_prompt_of_one_still_decoding(paced_bundle: Path) -> None:
    """Two slots: the second sequence copies the first one's system prompt while it decodes
    (a model slow enough that the first is still decoding; stopped once the second is done)."""
    engine = load_engine(paced_bundle, EngineOptions(
        provider="cpu", threads=1, max_batch=2, prefix_cache_mb=4))
    try:
        started, stop = threading.Event(), threading.Event()
        prompt = [*SYSTEM, *ids_from(30, 10)]
        long_answer = Sampling(max_tokens=engine.context_length - len(prompt), temperature=0.0)
        first = threading.Thread(target=engine.generate_ids, daemon=True, kwargs={
            "prompt_ids": prompt, "sampling": long_answer, "cancel": stop,
            "on_delta": lambda _text: started.set(), "ignore_eos": True})
        first.start()
        assert started.wait(wall_limit(30))
        second = engine.generate_ids([*SYSTEM, *ids_from(31, 10)], GREEDY)
        stop.set()
        first.join(wall_limit(60))
        assert engine.counters.peak_batch == 2, "the two decoded together"
        assert second.usage.cached_tokens >= 2 * BLOCK_TOKENS
    finally:
        engine.close()


def test_where_rows_depend_on_the_forwards_size_whole_blocks_keep_hits_exact(
    kind_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule for CPUs such as the boards' (docs/engine.md), made to hold on this one."""
    from edge_runtime.engine import slot_cache

    monkeypatch.setattr(slot_cache, "forwards_agree", lambda *_: False)
    bundle = kind_bundle("llama", "gqa")
    cold = load_engine(bundle, EngineOptions(provider="cpu", threads=1))
    cached = load_engine(bundle, EngineOptions(provider="cpu", threads=1, prefix_cache_mb=4))
    try:
        history = [*SYSTEM, *ids_from(40, 30)]
        asked = 0
        for turn in range(3):
            answer = cached.generate_ids(history, GREEDY)
            assert answer.token_ids == cold.generate_ids(history, GREEDY).token_ids
            assert answer.usage.cached_tokens % BLOCK_TOKENS == 0
            if turn:
                assert answer.usage.cached_tokens >= asked - asked % BLOCK_TOKENS
            asked = len(history)
            history += [*answer.token_ids, *ids_from(41 + turn, 12)]
        stats = cached.prefix_cache.stats if cached.prefix_cache else None
        assert stats is not None and stats.whole_blocks and stats.read_again == 0
    finally:
        cold.close()
        cached.close()
