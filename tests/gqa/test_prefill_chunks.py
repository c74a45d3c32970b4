"""A prompt longer than a chunk is fed in several forwards and answers as one forward would."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edge_runtime.engine.runners import gqa
from edge_runtime.engine.runners.single import SingleSequence
from tests.gqa.conftest import MAX_LENGTH, Exported

PROMPT = [(11 * i) % 250 + 2 for i in range(50)]


def _greedy(runner: SingleSequence, steps: int) -> tuple[list[np.ndarray], list[int]]:
    runner.reset()
    logits = [runner.forward(np.array(PROMPT))]
    tokens: list[int] = []
    for _ in range(steps):
        tokens.append(int(np.argmax(logits[-1])))
        logits.append(runner.forward(np.array(tokens[-1:])))
    return logits, tokens


def _count_forwards(runner: SingleSequence, monkeypatch: pytest.MonkeyPatch) -> list[None]:
    session = runner.slots.session
    calls: list[None] = []
    run = session.run_with_iobinding

    def counted(*args: object) -> object:
        calls.append(None)
        return run(*args)

    monkeypatch.setattr(session, "run_with_iobinding", counted)
    return calls


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_chunked_prompt_gives_the_logits_of_one_forward(
    gqa_export: Callable[[str], Exported], monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    e = gqa_export(arch)
    runner = e.runner()
    monkeypatch.setattr(gqa, "PREFILL_CHUNK", MAX_LENGTH)
    whole, whole_tokens = _greedy(runner, 8)
    monkeypatch.setattr(gqa, "PREFILL_CHUNK", 16)  # 50 tokens: forwards of 16, 16, 16, 2
    forwards = _count_forwards(runner, monkeypatch)
    chunked, chunked_tokens = _greedy(runner, 8)
    assert len(forwards) == 4 + 8
    assert chunked_tokens == whole_tokens
    for want, have in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-4, rtol=0)

