"""The KV cache is sized for the sequences at hand, grows without losing them, and shrinks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.engine.runners.gqa import CAPACITY_STEP
from edge_runtime.engine.runners.single import SingleSequence
from tests.gqa.conftest import Exported

CONTEXT = 4 * CAPACITY_STEP
PROMPT = [5, 17, 33, 100, 200, 7, 9, 42, 61, 3]


@pytest.fixture(scope="module")
def long_export(
    tiny_hf_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Exported:
    """The tiny qwen2 model as a gqa graph whose context spans several capacity steps."""
    from converters.gqa import export
    from tests.gqa.conftest import _architecture

    hf_dir = tiny_hf_model("qwen2")
    out = tmp_path_factory.mktemp("gqa-long")
    spec = export(hf_dir, out, max_length=CONTEXT)
    from transformers import AutoConfig

    arch = replace(_architecture(AutoConfig.from_pretrained(str(hf_dir))), context_length=CONTEXT)
    return Exported(hf_dir, out / "model.onnx", None, arch, spec)


def _greedy(runner: SingleSequence, prompt: list[int], steps: int) -> list[np.ndarray]:
    logits = [runner.forward(np.array(prompt))]
    for _ in range(steps):
        logits.append(runner.forward(np.array([int(np.argmax(logits[-1]))])))
    return logits


def test_growing_mid_sequence_keeps_the_cached_tokens(long_export: Exported) -> None:
    e = long_export
    prompt = [(7 * i) % 200 + 3 for i in range(CAPACITY_STEP - 4)]
    sized = e.runner(CONTEXT)
    sized.reset(CONTEXT)
    assert sized.slots.capacity == CONTEXT
    growing = e.runner(CONTEXT)
    growing.reset()
    assert growing.slots.capacity == CAPACITY_STEP
    expected = _greedy(sized, prompt, 12)
    got = _greedy(growing, prompt, 12)  # crosses the first step: the cache grows mid-decode
    assert growing.slots.capacity > CAPACITY_STEP
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-5, rtol=0)


def test_a_long_request_gives_its_memory_back_to_the_next_short_one(long_export: Exported) -> None:
    e = long_export
    runner = e.runner(CONTEXT)
    runner.reset(CONTEXT)
    long_answer = _greedy(runner, PROMPT, 3)
    runner.reset(len(PROMPT) + 4)
    assert runner.slots.capacity == CAPACITY_STEP
    short_answer = _greedy(runner, PROMPT, 3)
    for want, have in zip(long_answer, short_answer, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-5, rtol=0)


def test_a_slot_joining_with_a_longer_need_leaves_the_active_one_intact(
    long_export: Exported,
) -> None:
    e = long_export
    alone = _greedy(e.runner(CONTEXT), PROMPT, 6)
    slots = e.slots(2, CONTEXT)
    slots.fit(len(PROMPT) + 6)
    got = [slots.run(0, np.array([PROMPT]), np.zeros(1, np.int64))[0].copy()]
    length = len(PROMPT)
    for _ in range(2):
        token = np.array([[int(np.argmax(got[-1]))]])
        got.append(slots.run(0, token, np.array([length]))[0].copy())
        length += 1
    newcomer = [(3 * i) % 150 + 2 for i in range(CAPACITY_STEP + 20)]
    slots.reserve(len(newcomer) + 8)  # what the scheduler does when a sequence joins
    assert slots.capacity > CAPACITY_STEP
    slots.run(1, np.array([newcomer]), np.zeros(1, np.int64))
    lengths = np.array([length, len(newcomer)])
    for _ in range(4):
        token = np.array([[int(np.argmax(got[-1]))], [1]])
        got.append(slots.run(0, token, lengths)[0].copy())
        lengths += 1
    for want, have in zip(alone, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-4, rtol=0)
