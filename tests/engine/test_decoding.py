"""Per-sequence decoding state, driven by scripted logits (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.engine.decoding import Decoding
from edge_runtime.engine.defaults import GenerationDefaults, resolve
from edge_runtime.engine.request import Sampling, parse_request
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.engine.types import FinishReason
from edge_runtime.errors import BadRequest
from tests.fixtures.tiny_models import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder: Path = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return Tokenizer(folder / "tokenizer.json")


def one_hot(token: int, vocab: int) -> np.ndarray:
    logits = np.full(vocab, -10.0, dtype=np.float32)
    logits[token] = 10.0
    return logits


def run(
    tokenizer: Tokenizer, script: list[int], max_new: int = 100, **params: object
) -> tuple[Decoding, list[str]]:
    eos = tokenizer.encode("<|im_end|>")[0]
    decoding = Decoding(
        tokenizer,
        tokenizer.encode("Q:"),
        resolve(Sampling.model_validate({"temperature": 0.0, **params}), GenerationDefaults()),
        eos_ids=[eos],
        max_new_tokens=max_new,
        vocab_size=tokenizer.vocab_size,
    )
    deltas = []
    for token in script:
        step = decoding.step(one_hot(token, tokenizer.vocab_size))
        deltas.append(step.delta)
        if step.finished:
            break
    return decoding, deltas


def test_stop_string_split_across_tokens_is_caught_and_not_shown(tokenizer: Tokenizer) -> None:
    script = tokenizer.encode("The quick brown fox jumps over")
    decoding, deltas = run(tokenizer, script, stop=["brown fox"])
    # The stop string really spans tokens here.
    assert not any("brown fox" in tokenizer.decode([t]) for t in script)
    assert decoding.finish is FinishReason.STOP
    assert decoding.text == "".join(deltas) == "The quick "
    assert decoding.completion_tokens < len(script)


def test_eos_finishes_without_showing_it(tokenizer: Tokenizer) -> None:
    script = tokenizer.encode("lazy dog<|im_end|>never")
    decoding, _ = run(tokenizer, script)
    assert decoding.finish is FinishReason.STOP
    assert decoding.text == "lazy dog"
    assert decoding.completion_tokens == len(tokenizer.encode("lazy dog"))


def test_max_new_tokens_finishes_with_length(tokenizer: Tokenizer) -> None:
    script = tokenizer.encode("Sensors report temperature, humidity and pressure")
    decoding, deltas = run(tokenizer, script, max_new=3)
    assert decoding.finish is FinishReason.LENGTH
    assert decoding.completion_tokens == 3
    assert decoding.text == tokenizer.decode(script[:3]) == "".join(deltas)


def test_stopping_from_outside_releases_held_text(tokenizer: Tokenizer) -> None:
    script = tokenizer.encode("Field dev")
    decoding, _ = run(tokenizer, script, stop=["devices!"])
    assert decoding.finish is None
    tail = decoding.stop(FinishReason.CANCELLED)
    assert decoding.finish is FinishReason.CANCELLED
    assert decoding.text.endswith(tail.text) and decoding.text == "Field dev"


@pytest.mark.parametrize(
    "fields",
    [{"temperature": -1}, {"top_p": 0}, {"min_p": 2}, {"max_tokens": 0},
     {"temperature": float("nan")}, {"top_k": 1.5}, {"stop": [""]}],
)
def test_bad_sampling_values_are_bad_requests_naming_the_field(fields: dict) -> None:
    with pytest.raises(BadRequest, match=next(iter(fields))):
        parse_request({"prompt": "x", **fields})


def test_bundle_defaults_the_request_model_refuses_are_bundle_errors() -> None:
    from edge_runtime.errors import BundleError

    with pytest.raises(BundleError):
        GenerationDefaults.from_dict({"temperature": -2})


def test_request_values_override_bundle_defaults() -> None:
    defaults = GenerationDefaults.from_dict({"temperature": 0.7, "top_k": 40, "max_tokens": 99})
    got = resolve(Sampling(temperature=0.0), defaults)
    assert got.sampler.temperature == 0.0
    assert got.sampler.top_k == 40
    assert got.max_tokens == 99
