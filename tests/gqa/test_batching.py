"""Continuous batching gives every caller exactly what it would get running alone."""

from __future__ import annotations

import copy
import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.engine import GenerationRequest, Sampling, load_engine
from edge_runtime.engine.engine import OnnxEngine
from edge_runtime.engine.scheduler import Scheduler
from edge_runtime.engine.types import FinishReason, GenerationResult
from tests.fixtures.threads import run_together

PROMPTS = [
    "The quick brown fox",
    "Sensors report temperature",
    "def add(a, b):",
    "Field devices answer questions offline over MQTT.",
    "你好，世界。",  # noqa: RUF001 (real multi-byte text)
    "0123456789 + - * /",
]
MAX_TOKENS = [20, 7, 31, 12, 25, 16]  # different lengths: sequences leave at different steps


@pytest.fixture(scope="module")
def engine(tiny_bundle: Callable[..., Path]) -> OnnxEngine:
    loaded = load_engine(tiny_bundle("qwen2", "fp32"))
    assert loaded.manifest.graph.kind == "gqa" and loaded.capacity == 1
    return loaded


def held(engine: OnnxEngine, slots: int) -> OnnxEngine:
    """The same model with ``slots`` slots, its scheduler held until ``start()``."""
    batched = copy.copy(engine)
    batched.scheduler = Scheduler(engine.new_slots(slots), start=False)
    return batched


@pytest.fixture
def batching(engine: OnnxEngine) -> Iterator[OnnxEngine]:
    # Started by _together once every request waits, so the batch really fills up.
    batched = held(engine, 4)
    yield batched
    batched.close()


def _params(max_tokens: int) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0)


def _ids(engine: OnnxEngine, prompt: str) -> list[int]:
    return engine.encode(GenerationRequest(prompt=prompt))


def _alone(engine: OnnxEngine) -> list[GenerationResult]:
    return [
        engine.generate_ids(_ids(engine, p), _params(n), ignore_eos=True)
        for p, n in zip(PROMPTS, MAX_TOKENS, strict=True)
    ]


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _together(
    batched: OnnxEngine, cancel: dict[int, threading.Event] | None = None
) -> list[GenerationResult]:
    def run(i: int) -> GenerationResult:
        event = (cancel or {}).get(i)
        return batched.generate_ids(
            _ids(batched, PROMPTS[i]), _params(MAX_TOKENS[i]), cancel=event, ignore_eos=True
        )

    def release() -> None:
        _wait_for(lambda: batched.scheduler.waiting == len(PROMPTS))
        batched.scheduler.start()

    return run_together([functools.partial(run, i) for i in range(len(PROMPTS))],
                        limit_s=120, then=release)


def test_concurrent_greedy_generations_equal_sequential_ones(
    engine: OnnxEngine, batching: OnnxEngine
) -> None:
    alone = _alone(engine)
    together = _together(batching)
    for a, b in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids
        assert b.text == a.text
        assert b.finish_reason == FinishReason.LENGTH
        assert b.usage == a.usage
    counters = batching.counters
    assert counters.peak_batch == 4  # the sequences really shared forwards
    assert counters.prefills == len(PROMPTS)
    # every token after each sequence's first (which comes from its prefill) is a decode row
    assert counters.decode_tokens == sum(len(r.token_ids) - 1 for r in together)
    assert counters.decode_steps < counters.decode_tokens
    assert counters.decode_tok_s > 0


def test_waiting_for_a_slot_counts_as_queued(batching: OnnxEngine) -> None:
    together = _together(batching)
    # Four got a slot at once; the last two waited for a sequence to end.
    waited = sorted(r.timings.queued_s for r in together)
    first_to_end = min(r.timings.first_token_s + r.timings.decode_s for r in together)
    assert waited[-1] >= first_to_end * 0.5 and waited[-1] > waited[0]


def test_cancelling_one_sequence_leaves_the_others_intact(
    engine: OnnxEngine, batching: OnnxEngine
) -> None:
    alone = _alone(engine)
    stop = threading.Event()
    stop.set()  # cancelled from the start: it must end at once and free its slot
    together = _together(batching, {2: stop})
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        if i == 2:
            assert b.finish_reason == FinishReason.CANCELLED
            assert len(b.token_ids) < MAX_TOKENS[2]
        else:
            assert b.token_ids == a.token_ids


def test_stream_yields_the_same_text_as_generate(
    engine: OnnxEngine, batching: OnnxEngine
) -> None:
    request = GenerationRequest(prompt=PROMPTS[0], max_tokens=12, temperature=0.0)
    expected = engine.generate(request).text
    batching.scheduler.start()
    assert "".join(batching.stream(request)) == expected


def test_requests_after_close_are_refused(engine: OnnxEngine) -> None:
    from edge_runtime.errors import ShuttingDown

    batched = held(engine, 2)
    batched.close()
    with pytest.raises(ShuttingDown):
        batched.generate(GenerationRequest(prompt=PROMPTS[0], max_tokens=4))


def _record_steps(scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each prompt chunk (by prompt length) and each decode step, in order."""
    steps: list[str] = []
    fill, decode = scheduler._fill, scheduler._decode_step

    def recorded_fill(sequence: Any) -> None:
        steps.append(f"fill{len(sequence.prompt_ids)}")
        fill(sequence)

    def recorded_decode() -> None:
        steps.append("decode")
        decode()

    monkeypatch.setattr(scheduler, "_fill", recorded_fill)
    monkeypatch.setattr(scheduler, "_decode_step", recorded_decode)
    return steps


def test_a_long_prompt_is_read_a_chunk_at_a_time_while_the_others_decode(
    engine: OnnxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.engine import scheduler as scheduler_module
    from edge_runtime.engine.runners import gqa

    monkeypatch.setattr(gqa, "PREFILL_CHUNK", 8)
    monkeypatch.setattr(scheduler_module, "INTERLEAVE_AFTER", 30)
    long_ids = [(7 * i) % 200 + 3 for i in range(40)]  # five chunks; the others are shorter
    jobs = [(_ids(engine, PROMPTS[0]), 3), (_ids(engine, PROMPTS[2]), 20), (long_ids, 6)]
    assert all(len(ids) <= 30 for ids, _ in jobs[:2])
    alone = [engine.generate_ids(ids, _params(n), ignore_eos=True) for ids, n in jobs]

    batched = held(engine, 4)
    steps = _record_steps(batched.scheduler, monkeypatch)
    results: list[GenerationResult | None] = [None] * len(jobs)

    def run(i: int) -> None:
        ids, n = jobs[i]
        results[i] = batched.generate_ids(ids, _params(n), ignore_eos=True)

    threads = []
    for i in range(len(jobs)):  # queued in this order: two short prompts, then the long one
        threads.append(threading.Thread(target=run, args=(i,)))
        threads[-1].start()
        _wait_for(lambda i=i: batched.scheduler.waiting > i)
    batched.scheduler.start()
    for t in threads:
        t.join(timeout=120)
    batched.close()

    assert [r.token_ids if r else None for r in results] == [a.token_ids for a in alone]
    # Both short prompts are read whole before any decode step; then the long one a chunk
    # per step between decode steps.
    first_decode = steps.index("decode")
    assert set(steps[: first_decode - 1]) <= {f"fill{len(ids)}" for ids, _ in jobs[:2]}, steps
    assert steps[first_decode - 1 : first_decode + 9] == ["fill40", "decode"] * 5, steps


def test_a_long_prompt_cancelled_while_it_is_read_frees_its_slot(
    engine: OnnxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.engine import scheduler as scheduler_module
    from edge_runtime.engine.runners import gqa

    monkeypatch.setattr(gqa, "PREFILL_CHUNK", 8)
    monkeypatch.setattr(scheduler_module, "INTERLEAVE_AFTER", 30)
    short = _ids(engine, PROMPTS[2])
    long_ids = [(5 * i) % 200 + 3 for i in range(40)]
    alone = engine.generate_ids(short, _params(12), ignore_eos=True)

    batched = held(engine, 2)
    scheduler = batched.scheduler
    stop = threading.Event()
    fill = scheduler._fill
    read: list[int] = []  # how much of the long prompt is in, after each of its fills

    def fill_then_cancel(sequence: Any) -> None:
        fill(sequence)
        if sequence.prompt_ids == long_ids:
            read.append(sequence.length)
            stop.set()  # the caller gives up after the first chunk of its prompt

    monkeypatch.setattr(scheduler, "_fill", fill_then_cancel)
    results: dict[str, GenerationResult] = {}

    def run(name: str, ids: list[int], n: int, cancel: threading.Event | None) -> None:
        results[name] = batched.generate_ids(ids, _params(n), cancel=cancel, ignore_eos=True)

    first = threading.Thread(target=run, args=("short", short, 12, None))
    first.start()
    _wait_for(lambda: scheduler.waiting >= 1)
    second = threading.Thread(target=run, args=("long", long_ids, 6, stop))
    second.start()
    _wait_for(lambda: scheduler.waiting >= 2)
    scheduler.start()
    first.join(timeout=60)
    second.join(timeout=60)
    batched.close()

    assert results["long"].finish_reason == FinishReason.CANCELLED
    assert results["long"].token_ids == ()
    assert results["short"].token_ids == alone.token_ids
    assert read == [8, 8]  # the next step found it cancelled and read no more
