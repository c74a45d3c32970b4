"""Continuous batching gives every caller exactly what it would get running alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.engine import SamplingParams, load_engine
from edge_runtime.engine.batching import BatchingEngine
from edge_runtime.engine.engine import OnnxEngine
from edge_runtime.engine.types import FinishReason, GenerationResult

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
    assert loaded.manifest.graph.kind == "gqa"
    return loaded


@pytest.fixture
def batching(engine: OnnxEngine) -> Iterator[BatchingEngine]:
    # Started by _together once every request waits, so the batch really fills up.
    batcher = BatchingEngine(engine, max_batch=4, start=False)
    yield batcher
    batcher.close()


def _params(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def _alone(engine: OnnxEngine) -> list[GenerationResult]:
    return [
        engine.generate_ids(engine.encode(p), _params(n), ignore_eos=True)
        for p, n in zip(PROMPTS, MAX_TOKENS, strict=True)
    ]


def _together(batcher: BatchingEngine, cancel: dict[int, threading.Event] | None = None) -> list:
    results: list[GenerationResult | None] = [None] * len(PROMPTS)
    engine = batcher.engine

    def run(i: int) -> None:
        event = (cancel or {}).get(i)
        ids = engine.encode(PROMPTS[i])
        results[i] = batcher.generate_ids(
            ids, _params(MAX_TOKENS[i]), cancel=event, ignore_eos=True
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while batcher.waiting < len(PROMPTS) and time.monotonic() < deadline:
        time.sleep(0.01)
    batcher.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_concurrent_greedy_generations_equal_sequential_ones(
    engine: OnnxEngine, batching: BatchingEngine
) -> None:
    alone = _alone(engine)
    together = _together(batching)
    for a, b in zip(alone, together, strict=True):
        assert b is not None
        assert b.token_ids == a.token_ids
        assert b.text == a.text
        assert b.finish_reason == FinishReason.LENGTH
        assert b.usage == a.usage
    assert batching.peak_batch == 4  # the sequences really shared forwards
    counters = batching.counters
    assert counters.prefills == len(PROMPTS)
    # every token after each sequence's first (which comes from its prefill) is a decode row
    assert counters.decode_tokens == sum(len(r.token_ids) - 1 for r in together if r)
    assert counters.decode_steps < counters.decode_tokens
    assert counters.decode_tok_s > 0


def test_cancelling_one_sequence_leaves_the_others_intact(
    engine: OnnxEngine, batching: BatchingEngine
) -> None:
    alone = _alone(engine)
    stop = threading.Event()
    stop.set()  # cancelled from the start: it must end at once and free its slot
    together = _together(batching, {2: stop})
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert b is not None
        if i == 2:
            assert b.finish_reason == FinishReason.CANCELLED
            assert len(b.token_ids) < MAX_TOKENS[2]
        else:
            assert b.token_ids == a.token_ids


def test_stream_yields_the_same_text_as_generate(
    engine: OnnxEngine, batching: BatchingEngine
) -> None:
    expected = engine.generate(PROMPTS[0], _params(12)).text
    batching.start()
    assert "".join(batching.stream(PROMPTS[0], _params(12))) == expected


def test_requests_after_close_are_refused(engine: OnnxEngine) -> None:
    from edge_runtime.errors import ShuttingDown

    batcher = BatchingEngine(engine, max_batch=2)
    batcher.close()
    with pytest.raises(ShuttingDown):
        batcher.generate(PROMPTS[0], _params(4))


def test_a_long_prompt_is_read_a_chunk_at_a_time_while_the_others_decode(
    engine: OnnxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.engine import batching as batching_module
    from edge_runtime.engine.runners import gqa

    monkeypatch.setattr(gqa, "PREFILL_CHUNK", 8)
    monkeypatch.setattr(batching_module, "INTERLEAVE_AFTER", 30)
    long_ids = [(7 * i) % 200 + 3 for i in range(40)]  # five chunks; the others are shorter
    jobs = [(engine.encode(PROMPTS[0]), 3), (engine.encode(PROMPTS[2]), 20), (long_ids, 6)]
    assert all(len(ids) <= 30 for ids, _ in jobs[:2])
    alone = [engine.generate_ids(ids, _params(n), ignore_eos=True) for ids, n in jobs]

    batcher = BatchingEngine(engine, max_batch=4, start=False)
    steps: list[str] = []
    fill, decode = batcher._fill, batcher._decode_step
    monkeypatch.setattr(batcher, "_fill", lambda r, n: (steps.append("fill"), fill(r, n))[1])
    monkeypatch.setattr(batcher, "_decode_step", lambda: (steps.append("decode"), decode())[1])
    results: list[GenerationResult | None] = [None] * len(jobs)

    def run(i: int) -> None:
        ids, n = jobs[i]
        results[i] = batcher.generate_ids(ids, _params(n), ignore_eos=True)

    threads = []
    for i in range(len(jobs)):  # queued in this order: two short prompts, then the long one
        threads.append(threading.Thread(target=run, args=(i,)))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while batcher.waiting <= i and time.monotonic() < deadline:
            time.sleep(0.01)
    batcher.start()
    for t in threads:
        t.join(timeout=120)
    batcher.close()

    assert [r.token_ids if r else None for r in results] == [a.token_ids for a in alone]
    # Both short prompts at once, then the long one a chunk per step between decode steps;
    # the first sequence ends (at the second decode step) while the long prompt is read.
    assert steps[:2] == ["fill", "fill"], steps
    assert steps[2:12] == ["fill", "decode"] * 5, steps


def test_a_long_prompt_cancelled_while_it_is_read_frees_its_slot(
    engine: OnnxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.engine import batching as batching_module
    from edge_runtime.engine.runners import gqa

    monkeypatch.setattr(gqa, "PREFILL_CHUNK", 8)
    monkeypatch.setattr(batching_module, "INTERLEAVE_AFTER", 30)
    short = engine.encode(PROMPTS[2])
    long_ids = [(5 * i) % 200 + 3 for i in range(40)]
    alone = engine.generate_ids(short, _params(12), ignore_eos=True)

    batcher = BatchingEngine(engine, max_batch=2, start=False)
    stop = threading.Event()
    fill = batcher._fill
    read: list[int] = []  # how much of the long prompt is in, after each of its fills

    def fill_then_cancel(request: Any, count: int) -> None:
        fill(request, count)
        if request.prompt_ids == long_ids:
            read.append(request.length)
            stop.set()  # the caller gives up after the first chunk of its prompt

    monkeypatch.setattr(batcher, "_fill", fill_then_cancel)
    results: dict[str, GenerationResult] = {}

    def run(name: str, ids: list[int], n: int, cancel: threading.Event | None) -> None:
        results[name] = batcher.generate_ids(ids, _params(n), cancel=cancel, ignore_eos=True)

    first = threading.Thread(target=run, args=("short", short, 12, None))
    first.start()
    while batcher.waiting < 1:
        time.sleep(0.01)
    second = threading.Thread(target=run, args=("long", long_ids, 6, stop))
    second.start()
    while batcher.waiting < 2:
        time.sleep(0.01)
    batcher.start()
    first.join(timeout=60)
    second.join(timeout=60)
    batcher.close()

    assert results["long"].finish_reason == FinishReason.CANCELLED
    assert results["long"].token_ids == ()
    assert results["short"].token_ids == alone.token_ids
    assert read == [8, 8]  # the next step found it cancelled and read no more
