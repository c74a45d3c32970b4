"""Generation on tiny random fp32 bundles: same tokens as transformers, sampling, limits."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.engine import FinishReason, OnnxEngine, SamplingParams
from edge_runtime.engine.runners import RUNNERS
from edge_runtime.errors import BadRequest, ContextLengthExceeded

KINDS = sorted(RUNNERS)
PROMPTS = ["The quick brown fox", "Sensors report temperature, humidity"]
GREEDY = SamplingParams(max_tokens=32, temperature=0.0)


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
        ids = engine.encode(prompt, chat=chat)
        if chat:
            assert ids == hf_chat_ids(tiny_hf_model(arch), prompt)
        result = engine.generate(prompt, GREEDY, chat=chat)
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
    params = SamplingParams(max_tokens=32, temperature=0.0, repetition_penalty=1.3)
    for prompt in PROMPTS:
        ids = engine.encode(prompt, chat=False)
        result = engine.generate(prompt, params, chat=False)
        assert list(result.token_ids) == hf_greedy(tiny_hf_model(), ids, 32, 1.3)
        assert result.token_ids != engine.generate(prompt, GREEDY, chat=False).token_ids


def test_same_seed_same_text_other_seed_other_text(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()

    def sample(seed: int) -> str:
        params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.95, seed=seed)
        return engine.generate("Field devices", params, chat=False).text

    first = sample(7)
    assert first and sample(7) == first
    assert sample(8) != first


def test_stream_yields_the_text_generate_returns(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    pieces = list(engine.stream("Hello", GREEDY, chat=True))
    assert "".join(pieces) == engine.generate("Hello", GREEDY, chat=True).text
    assert all(pieces)


def test_closing_a_stream_early_frees_the_engine(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    pieces = engine.stream("Hello", GREEDY, chat=True)
    next(iter(pieces))
    pieces.close()  # type: ignore[attr-defined]
    assert engine.generate("Hello", GREEDY, chat=True).usage.completion_tokens > 0


def test_on_delta_pieces_join_to_the_text(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    pieces: list[str] = []
    result = engine.generate("def add(a, b):", GREEDY, chat=False, on_delta=pieces.append)
    assert "".join(pieces) == result.text
    assert result.timings.prefill_s > 0 and result.timings.first_token_s > 0


def test_chat_messages_and_their_misuse(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    result = engine.generate(messages, GREEDY)  # type: ignore[arg-type]
    assert result.usage.prompt_tokens == len(engine.encode(messages))  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        engine.generate(messages, GREEDY, chat=False)  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        engine.generate([{"role": "user"}], GREEDY)  # type: ignore[typeddict-item]


def test_over_long_prompt_is_refused_with_the_numbers(
    tiny_engine: Callable[..., OnnxEngine],
) -> None:
    engine = tiny_engine()
    prompt = "The quick brown fox jumps over the lazy dog. " * 40
    count = len(engine.encode(prompt, chat=False))
    assert count > engine.context_length
    with pytest.raises(ContextLengthExceeded) as info:
        engine.generate(prompt, GREEDY, chat=False)
    assert info.value.code == "context_length_exceeded"
    assert str(count) in info.value.message and str(engine.context_length) in info.value.message
    with pytest.raises(ContextLengthExceeded):
        engine.stream(prompt, GREEDY, chat=False)  # raised at the call, not at the first piece


def test_generation_stops_with_length_at_the_context_limit(
    tiny_engine: Callable[..., OnnxEngine],
) -> None:
    engine = tiny_engine()
    ids = engine.encode("The quick brown fox jumps over the lazy dog. " * 40, chat=False)
    room = 5
    prompt = ids[: engine.context_length - room]
    result = engine.generate_ids(prompt, SamplingParams(max_tokens=100), ignore_eos=True)
    assert result.finish_reason is FinishReason.LENGTH
    assert result.usage.completion_tokens == room
    assert result.usage.total_tokens == engine.context_length


def test_cancel_from_another_thread_stops_within_one_token(
    tiny_engine: Callable[..., OnnxEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engine()
    cancel, reached, resumed = threading.Event(), threading.Event(), threading.Event()
    forwards_after_cancel = []
    original = engine.runner.forward

    def counting_forward(ids: np.ndarray) -> np.ndarray:
        if cancel.is_set():
            forwards_after_cancel.append(len(ids))
        return original(ids)

    monkeypatch.setattr(engine.runner, "forward", counting_forward)
    pieces: list[str] = []

    def on_delta(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 4:
            reached.set()
            resumed.wait(10)

    def canceller() -> None:
        reached.wait(10)
        cancel.set()
        resumed.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    ids = engine.encode("Hello", chat=False)
    result = engine.generate_ids(
        ids, SamplingParams(max_tokens=200), cancel=cancel, on_delta=on_delta, ignore_eos=True
    )
    thread.join(10)
    assert result.finish_reason is FinishReason.CANCELLED
    assert forwards_after_cancel == []
    assert result.usage.completion_tokens < 200
    assert result.text.startswith("".join(pieces[:4]))


def test_concurrent_calls_wait_their_turn(tiny_engine: Callable[..., OnnxEngine]) -> None:
    engine = tiny_engine()
    prompts = ["The quick brown fox", "Sensors report", "Emoji: 🙂", "def add(a, b):"]
    alone = [engine.generate(p, GREEDY, chat=False).token_ids for p in prompts]
    together: dict[int, tuple[int, ...]] = {}

    def work(i: int) -> None:
        together[i] = engine.generate(prompts[i], GREEDY, chat=False).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [together[i] for i in range(len(prompts))] == alone
