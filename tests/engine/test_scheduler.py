"""The one decode loop over scripted KV slots (no model): faults stay with their sequence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.engine.decoding import Decoding
from edge_runtime.engine.defaults import GenerationDefaults, resolve
from edge_runtime.engine.request import Sampling
from edge_runtime.engine.scheduler import Scheduler
from edge_runtime.engine.sequence import Clock, Sequence, now, relay
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.engine.types import FinishReason
from edge_runtime.errors import InternalError
from tests.fixtures.tiny_models import VOCAB_SIZE, build_tokenizer

POISON = 7
"""A token whose row makes the scripted forward fail."""


class ScriptedSlots:
    """KV slots whose next token is always ``last + 1``; a POISON token fails its forward."""

    max_slots = 8
    chunk = 4

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.max_length = 256
        self.forwards: list[int] = []  # rows per forward

    def fit(self, length: int) -> None:
        pass

    def reserve(self, length: int) -> None:
        pass

    def move(self, src: int, dst: int, length: int) -> None:
        pass

    def run(self, start: int, tokens: np.ndarray, lengths: np.ndarray, *,
            settle: bool = False) -> np.ndarray:
        self.forwards.append(tokens.shape[0])
        if (tokens[:, -1] == POISON).any():
            raise RuntimeError("kernel fault on this row")
        logits = np.full((tokens.shape[0], VOCAB_SIZE), -10.0, np.float32)
        logits[np.arange(tokens.shape[0]), (tokens[:, -1] + 1) % 300] = 10.0
        return logits


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder: Path = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return Tokenizer(folder / "tokenizer.json")


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    held = Scheduler(ScriptedSlots(4), start=False)
    yield held
    held.close()


def sequence(
    tokenizer: Tokenizer, prompt: list[int], max_tokens: int, **fields: object
) -> Sequence:
    resolved = resolve(Sampling.model_validate({"max_tokens": max_tokens, **fields}),
                       GenerationDefaults())
    decoding = Decoding(tokenizer, prompt, resolved, eos_ids=[], max_new_tokens=max_tokens,
                        vocab_size=VOCAB_SIZE)
    return Sequence(prompt, decoding, Clock(now()))


def results(sequences: list[Sequence]) -> list[object]:
    out: list[object] = []
    for s in sequences:
        try:
            out.append(relay(s, None))
        except InternalError as exc:
            out.append(exc)
    return out


def test_a_row_that_fails_in_a_batched_forward_ends_alone(
    tokenizer: Tokenizer, scheduler: Scheduler
) -> None:
    # 3 reaches POISON after four steps; the others never do.
    sequences = [sequence(tokenizer, [3], 10), sequence(tokenizer, [100], 10),
                 sequence(tokenizer, [200], 10)]
    for s in sequences:
        scheduler.submit(s)
    scheduler.start()
    failed, *others = results(sequences)
    assert isinstance(failed, InternalError) and "kernel fault" in failed.message
    assert [r.token_ids for r in others] == [tuple(range(101, 111)), tuple(range(201, 211))]
    assert scheduler.counters.failed == 1
    assert scheduler.counters.peak_batch == 3


def test_a_prompt_that_cannot_be_read_fails_only_its_sequence(
    tokenizer: Tokenizer, scheduler: Scheduler
) -> None:
    bad = sequence(tokenizer, [1, 2, 3, 4, 5, 6, POISON], 5)  # its last chunk fails
    good = sequence(tokenizer, [10, 11], 5)
    scheduler.submit(bad)
    scheduler.submit(good)
    scheduler.start()
    outcome = results([bad, good])
    assert isinstance(outcome[0], InternalError) and "prompt" in outcome[0].message
    assert outcome[1].token_ids == (12, 13, 14, 15, 16)  # type: ignore[union-attr]


def test_a_sampling_fault_ends_only_its_sequence(
    tokenizer: Tokenizer, scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd, fine = sequence(tokenizer, [20], 6), sequence(tokenizer, [40], 6)

    def broken(logits: np.ndarray) -> object:
        raise IndexError("sampling blew up")

    monkeypatch.setattr(odd.decoding, "step", broken)
    for s in (odd, fine):
        scheduler.submit(s)
    scheduler.start()
    outcome = results([odd, fine])
    assert isinstance(outcome[0], InternalError) and "IndexError" in outcome[0].message
    assert outcome[1].token_ids == tuple(range(41, 47))  # type: ignore[union-attr]


@pytest.mark.parametrize("fields", [{"temperature": 1e-300}, {"repetition_penalty": 1e-300},
                                    {"temperature": 1e-300, "repetition_penalty": 1e-300,
                                     "top_p": 1e-9, "min_p": 1.0}])
def test_every_value_the_request_model_accepts_gives_an_answer(
    tokenizer: Tokenizer, scheduler: Scheduler, fields: dict[str, float]
) -> None:
    odd = sequence(tokenizer, [50], 6, **fields)
    scheduler.submit(odd)
    scheduler.start()
    result = relay(odd, None)
    assert result.finish_reason is FinishReason.LENGTH
    assert len(result.token_ids) == 6


def test_waiting_for_a_slot_is_counted_as_queued(tokenizer: Tokenizer) -> None:
    held = Scheduler(ScriptedSlots(1), start=False)
    first, second = sequence(tokenizer, [10], 40), sequence(tokenizer, [100], 2)
    held.submit(first)
    held.submit(second)
    held.start()
    done_first, done_second = relay(first, None), relay(second, None)
    held.close()
    assert done_second.timings.queued_s >= done_first.timings.decode_s
    assert done_first.timings.queued_s < done_second.timings.queued_s


def test_idle_only_once_every_sequence_has_left(tokenizer: Tokenizer, scheduler: Scheduler) -> None:
    sequences = [sequence(tokenizer, [10], 5), sequence(tokenizer, [20], 5)]
    for s in sequences:
        scheduler.submit(s)
    assert not scheduler.wait_idle(0.05), "two sequences wait: not idle"
    scheduler.start()
    results(sequences)
    assert scheduler.wait_idle(10)
    assert all(s.ended for s in sequences)
