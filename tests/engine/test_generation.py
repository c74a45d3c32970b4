"""Generation on tiny random fp32 bundles: same tokens as transformers, sampling, limits."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.engine import FinishReason, GenerationRequest, OnnxEngine, Sampling
from edge_runtime.engine.runners import RUNNERS
from edge_runtime.errors import BadRequest, ContextLengthExceeded
from tests.fixtures.threads import run_together

KINDS = sorted(RUNNERS)
PROMPTS = ["The quick brown fox", "Sensors report temperature, humidity"]


def greedy(prompt: str, chat: bool = True, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt, chat=chat, **{"max_tokens": 32, "temperature": 0.0, **fields}
    )


@functools.cache
def hf_model(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def hf_greedy(
    model_dir: Path, ids: list[int], new_tokens: int, repetition_penalty: float = 1.0
) -> list[int]:
    """Return transformers' greedy continuation of ``ids``, without the end token."""
    import torch

    model = hf_model(model_dir)
    inputs = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=new_tokens,
            do_sample=False,
            repetition_penalty=repetition_penalty,
        )
    new = out[0, len(ids) :].tolist()
    eos = model.generation_config.eos_token_id
    return new[:-1] if new and new[-1] == eos else new


def hf_chat_ids(model_dir: Path, prompt: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return list(ids)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("chat", [False, True], ids=["raw", "chat"])
def test_greedy_tokens_equal_transformers(
    tiny_engine: Callable[..., OnnxEngine],
    tiny_hf_model: Callable[..., Path],
    arch: str,
    kind: str,
    chat: bool,
) -> None:
    engine = tiny_engine(arch, kind)
    for prompt in PROMPTS:
        ids = engine.encode(greedy(prompt, chat))
        if chat:
            assert ids == hf_chat_ids(tiny_hf_model(arch), prompt)
        result = engine.generate(greedy(prompt, chat))
        expected = hf_greedy(tiny_hf_model(arch), ids, 32)
        assert list(result.token_ids) == expected
        assert result.usage.prompt_tokens == len(ids)
        assert result.usage.completion_tokens == len(expected)
        if len(expected) == 32:
            assert result.finish_reason is FinishReason.LENGTH


def test_greedy_with_repetition_penalty_equals_transformers(
    tiny_engine: Callable[..., OnnxEngine], tiny_hf_model: Callable[..., Path]
) -> None:
    engine = tiny_engine()
    for prompt in PROMPTS:
        ids = engine.encode(greedy(prompt, False))
        result = engine.generate(greedy(prompt, False, repetition_penalty=1.3))
        assert list(result.token_ids) == hf_greedy(tiny_hf_model(), ids, 32, 1.3)
        assert result.token_ids != engine.generate(greedy(prompt, False)).token_ids


def test_same_seed_same_text_other_seed_other_text(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()

    def sample(seed: int) -> str:
        request = greedy("Field devices", False, max_tokens=24, temperature=1.0, top_p=0.95,
                         seed=seed)
        return engine.generate(request).text

    first = sample(7)
    assert first and sample(7) == first
    assert sample(8) != first


def test_stream_yields_the_text_generate_returns(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    pieces = list(engine.stream(greedy("Hello")))
    assert "".join(pieces) == engine.generate(greedy("Hello")).text
    assert all(pieces)


def test_closing_a_stream_early_frees_the_engine(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    pieces = engine.stream(greedy("Hello"))
    next(iter(pieces))
    pieces.close()  # type: ignore[attr-defined]
    assert engine.generate(greedy("Hello")).usage.completion_tokens > 0


def test_on_delta_pieces_join_to_the_text(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    pieces: list[str] = []
    result = engine.generate(greedy("def add(a, b):", False), on_delta=pieces.append)
    assert "".join(pieces) == result.text
    assert result.timings.prefill_s > 0 and result.timings.first_token_s > 0


def test_chat_messages_and_their_misuse(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    from edge_runtime.engine import parse_request

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    request = parse_request({"messages": messages, "max_tokens": 8})
    result = engine.generate(request)
    assert result.usage.prompt_tokens == len(engine.encode(request))
    with pytest.raises(BadRequest, match="chat"):
        parse_request({"messages": messages, "chat": False})
    with pytest.raises(BadRequest, match="content"):
        parse_request({"messages": [{"role": "user"}]})


def test_over_long_prompt_is_refused_with_the_numbers(
    tiny_engine: Callable[..., OnnxEngine],
) -> None:
    engine = tiny_engine()
    prompt = "The quick brown fox jumps over the lazy dog. " * 40
    count = len(engine.encode(greedy(prompt, False)))
    assert count > engine.context_length
    with pytest.raises(ContextLengthExceeded) as info:
        engine.generate(greedy(prompt, False))
    assert info.value.code == "context_length_exceeded"
    assert str(count) in info.value.message and str(engine.context_length) in info.value.message
    with pytest.raises(ContextLengthExceeded):
        engine.stream(greedy(prompt, False))  # raised at the call, not at the first piece


def test_generation_stops_with_length_at_the_context_limit(
    tiny_engine: Callable[..., OnnxEngine],
) -> None:
    engine = tiny_engine()
    ids = engine.encode(greedy("The quick brown fox jumps over the lazy dog. " * 40, False))
    room = 5
    prompt = ids[: engine.context_length - room]
    result = engine.generate_ids(prompt, Sampling(max_tokens=100), ignore_eos=True)
    assert result.finish_reason is FinishReason.LENGTH
    assert result.usage.completion_tokens == room
    assert result.usage.total_tokens == engine.context_length


def test_cancel_from_another_thread_stops_within_one_token(
    tiny_engine: Callable[..., OnnxEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engine()
    cancel = threading.Event()
    forwards_after_cancel = []
    slots = engine.scheduler.slots
    original = slots.run

    def slow_run(*args: Any, **kwargs: Any) -> np.ndarray:
        if cancel.is_set():
            forwards_after_cancel.append(1)
        time.sleep(0.002)  # slower than the callbacks, so cancel lands mid-generation
        return original(*args, **kwargs)

    monkeypatch.setattr(slots, "run", slow_run)
    pieces: list[str] = []

    def on_delta(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 4:
            cancel.set()

    ids = engine.encode(greedy("Hello", False))
    result = engine.generate_ids(
        ids, Sampling(max_tokens=200), cancel=cancel, on_delta=on_delta, ignore_eos=True
    )
    assert result.finish_reason is FinishReason.CANCELLED
    assert len(forwards_after_cancel) <= 1  # the forward already under way, at most
    assert result.usage.completion_tokens < 200
    assert result.text == "".join(pieces)


def test_concurrent_calls_wait_their_turn(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    prompts = ["The quick brown fox", "Sensors report", "Emoji: 🙂", "def add(a, b):"]
    alone = [engine.generate(greedy(p, False)).token_ids for p in prompts]
    together = run_together([functools.partial(engine.generate, greedy(p, False)) for p in prompts],
                            limit_s=60)
    assert [result.token_ids for result in together] == alone
