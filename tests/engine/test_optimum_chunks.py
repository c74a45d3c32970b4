"""An optimum graph also reads a long prompt in chunks, with the logits of one forward."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edge_runtime.engine import OnnxEngine
from edge_runtime.engine.runners import optimum
from edge_runtime.engine.runners.optimum import OptimumSlots
from edge_runtime.engine.runners.single import SingleSequence

PROMPT = np.array([(13 * i) % 250 + 2 for i in range(45)])


def _prompt_then_greedy(runner: SingleSequence, steps: int) -> list[np.ndarray]:
    runner.reset()
    logits = [runner.forward(PROMPT)]
    for _ in range(steps):
        logits.append(runner.forward(np.array([int(np.argmax(logits[-1]))])))
    return logits


def test_chunked_prompt_gives_the_logits_of_one_forward(
    tiny_engine: Callable[..., OnnxEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = tiny_engine("llama", "optimum").single_sequence()
    assert isinstance(runner.slots, OptimumSlots)
    whole = _prompt_then_greedy(runner, 6)
    monkeypatch.setattr(optimum, "PREFILL_CHUNK", 10)  # 45 tokens: forwards of 10 x 4 and 5
    forwards: list[None] = []
    run = runner.slots._session.run_with_iobinding
    monkeypatch.setattr(runner.slots._session, "run_with_iobinding",
                        lambda *args: (forwards.append(None), run(*args))[1])
    chunked = _prompt_then_greedy(runner, 6)
    assert len(forwards) == 5 + 6
    assert runner.length == len(PROMPT) + 6
    for want, have in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-4, rtol=0)
