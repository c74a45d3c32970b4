"""How the scheduler uses the prefix cache, without a model: which forwards it asks for.

Exactness rests on one rule: no token is kept, or read after a hit, by a forward of one
token unless a cold read would have read it alone too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge_runtime.engine.prefix_cache import PrefixCache
from edge_runtime.engine.slot_cache import (
    READ_AGAIN_CHUNK,
    SlotCache,
    exact_start,
    forwards_agree,
)
from edge_runtime.engine.types import FinishReason

CHUNK = 64


def cold_forwards(length: int) -> list[int]:
    return [min(CHUNK, length - s) for s in range(0, length, CHUNK)]


@pytest.mark.parametrize("length", [2, 63, 64, 65, 66, 129, 130, 193, 640])
def test_the_rest_after_a_hit_is_read_in_forwards_of_a_cold_reads_kinds(length: int) -> None:
    cold_single = cold_forwards(length)[-1] == 1
    for found in range(length + 1):
        used = exact_start(found, length, CHUNK)
        assert 0 <= used <= min(found, length - 1)
        rest = [min(CHUNK, length - s) for s in range(used, length, CHUNK)]
        singles = [n for n in rest if n == 1]
        assert singles == ([1] if cold_single else []), (found, used, rest)
        assert rest[-1] == 1 if cold_single else rest[-1] > 1
        assert found - used < CHUNK


@dataclass
class RecordingSlots:
    """KV slots that record the forwards asked of them."""

    chunk: int = CHUNK
    token_bytes: int = 4
    forwards: list[tuple[int, int]] = field(default_factory=list)  # (start, count)

    def run(self, slot: int, tokens: np.ndarray, lengths: np.ndarray, **_: Any) -> np.ndarray:
        self.forwards.append((int(lengths[0]), int(tokens.shape[1])))
        return np.zeros((1, 8), np.float32)

    def read(self, slot: int, start: int, stop: int) -> np.ndarray:
        return np.zeros((1, 1, 1, stop - start, 1), np.float32)

    def write(self, slot: int, start: int, kv: np.ndarray) -> None:
        pass


def ended_sequence(prompt: int, answer: int, exact: int) -> Any:
    decoding = SimpleNamespace(tokens=list(range(1000, 1000 + answer)), finish=FinishReason.STOP)
    # The last answer token was sampled, never fed.
    return SimpleNamespace(prompt_ids=list(range(3, 3 + prompt)), decoding=decoding,
                           length=prompt + answer - 1, exact=exact)


@pytest.mark.parametrize(("prompt", "answer", "exact"),
                         [(100, 40, 100), (129, 2, 128), (100, 17, 100), (64, 1, 64)])
def test_an_answer_is_read_again_in_short_forwards_of_two_or_more(
    prompt: int, answer: int, exact: int
) -> None:
    slots = RecordingSlots()
    cache = SlotCache(PrefixCache(1 << 20, slots.token_bytes), slots)  # type: ignore[arg-type]
    sequence = ended_sequence(prompt, answer, exact)
    cache.keep(sequence, 0, ended=True, idle=lambda: True)
    assert sequence.exact == sequence.length
    assert all(2 <= count <= READ_AGAIN_CHUNK for _, count in slots.forwards)
    covered = [p for start, count in slots.forwards for p in range(start, start + count)]
    assert covered == list(range(covered[0], sequence.length)) if covered else True
    assert not covered or covered[0] <= exact
    assert cache.cache.tokens == sequence.length


def test_reading_again_stops_when_a_request_arrives() -> None:
    slots = RecordingSlots()
    cache = SlotCache(PrefixCache(1 << 20, slots.token_bytes), slots)  # type: ignore[arg-type]
    sequence = ended_sequence(100, 60, 100)
    calls = iter([True, True])
    cache.keep(sequence, 0, ended=True, idle=lambda: next(calls, False))
    assert len(slots.forwards) == 2
    assert sequence.exact == 100 + 2 * READ_AGAIN_CHUNK
    assert cache.cache.tokens == sequence.exact, "what was read again is kept"


def test_a_failed_sequence_keeps_nothing() -> None:
    slots = RecordingSlots()
    cache = SlotCache(PrefixCache(1 << 20, slots.token_bytes), slots)  # type: ignore[arg-type]
    sequence = ended_sequence(100, 10, 100)
    sequence.decoding.finish = FinishReason.ERROR
    cache.keep(sequence, 0, ended=True, idle=lambda: True)
    assert slots.forwards == [] and cache.cache.blocks == 0


@pytest.mark.parametrize("length", [2, 63, 64, 65, 129, 640])
def test_with_whole_blocks_the_rest_is_read_in_a_cold_reads_own_forwards(length: int) -> None:
    cold = [(s, min(CHUNK, length - s)) for s in range(0, length, CHUNK)]
    for found in range(length + 1):
        used = exact_start(found, length, CHUNK, whole_blocks=True)
        assert used % CHUNK == 0 and used <= min(found, length - 1)
        rest = [(s, min(CHUNK, length - s)) for s in range(used, length, CHUNK)]
        assert rest == cold[used // CHUNK :], (found, used)


def test_with_whole_blocks_only_a_cold_reads_full_forwards_are_kept() -> None:
    slots = RecordingSlots()
    cache = SlotCache(PrefixCache(1 << 20, slots.token_bytes), slots,  # type: ignore[arg-type]
                      whole_blocks=True)
    sequence = ended_sequence(150, 20, 0)
    for start, count in ((0, 64), (64, 64), (128, 22)):
        cache.note_read(sequence, start, count)
    assert sequence.exact == 128, "the last, partial forward is not one a longer prompt makes"
    cache.keep(sequence, 0, ended=True, idle=lambda: True)
    assert slots.forwards == [], "answers are not read again"
    assert cache.cache.tokens == 128 and cache.cache.stats.whole_blocks


class SizeDependentSlots(RecordingSlots):
    """Slots whose rows come out differently when left over from a group of four."""

    def __init__(self, agree: bool) -> None:
        super().__init__()
        self.agree = agree
        self.kv = np.zeros((1, 1, 1, 64, 1), np.float32)

    def fit(self, length: int) -> None:
        pass

    def run(self, slot: int, tokens: np.ndarray, lengths: np.ndarray, **_: Any) -> np.ndarray:
        start, count = int(lengths[0]), int(tokens.shape[1])
        for row in range(count):
            spare = not self.agree and row >= count - count % 4
            self.kv[..., start + row, :] = tokens[0, row] + (1e-6 if spare else 0.0)
        return np.zeros((1, 8), np.float32)

    def read(self, slot: int, start: int, stop: int) -> np.ndarray:
        return self.kv[..., start:stop, :].copy()


@pytest.mark.parametrize("agree", [True, False])
def test_the_probe_tells_whether_rows_depend_on_the_forwards_size(agree: bool) -> None:
    slots = SizeDependentSlots(agree)
    assert forwards_agree(slots, slots) is agree  # type: ignore[arg-type]
