"""Reasoning kept apart from the answer, for R1-style and Qwen3-style chat templates.

The tiny random models cannot reason, so their output is scripted with a regex grammar:
the constraint makes the model write exactly the reasoning block and the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.engine import OnnxEngine, load_engine, parse_request


@pytest.fixture(scope="module")
def engines(styled_bundle: Callable[[str], Path]) -> dict[str, OnnxEngine]:
    return {style: load_engine(styled_bundle(style)) for style in ("r1", "qwen3")}


def scripted(output: str, **fields: Any) -> Any:
    return parse_request({"prompt": "Why is the sky blue?", "max_tokens": 200,
                          "grammar": {"type": "regex", "grammar": output}, **fields})


def test_r1_reasoning_opened_by_the_prompt_is_kept_apart(engines: dict[str, OnnxEngine]) -> None:
    """The prompt opened the block; the budget of 3 tokens closes it: 3 tokens of reasoning."""
    engine = engines["r1"]
    assert engine.chat_format.markers.think is not None and not engine.chat_format.think_switch
    answer: list[str] = []
    thoughts: list[str] = []
    request = parse_request({"prompt": "Why?", "max_tokens": 30, "temperature": 0.0,
                             "max_reasoning_tokens": 3})
    result = engine.generate(request, on_delta=answer.append, on_reasoning=thoughts.append)
    ids = list(result.token_ids)
    assert result.reasoning == engine.tokenizer.decode(ids[:3]).strip()
    assert "".join(answer) == result.text
    assert "".join(thoughts).strip() == result.reasoning
    after = ids[3 + len(engine.chat_format.close_reasoning) :]
    assert result.text == engine.tokenizer.decode(after).lstrip("\n")


def test_qwen3_reasoning_opened_by_the_model_is_kept_apart(
    engines: dict[str, OnnxEngine],
) -> None:
    engine = engines["qwen3"]
    assert engine.chat_format.think_switch
    result = engine.generate(scripted(r"<think>\nshort waves scatter\n</think>\n\nBlue\."))
    assert (result.reasoning, result.text) == ("short waves scatter", "Blue.")


def test_qwen3_switch_off_renders_an_empty_block(engines: dict[str, OnnxEngine]) -> None:
    engine = engines["qwen3"]
    on = engine.tokenizer.decode(engine.encode(parse_request({"prompt": "Hi"})))
    off = engine.tokenizer.decode(engine.encode(parse_request({"prompt": "Hi", "think": False})))
    assert "</think>" not in on and off.endswith("<think>\n\n</think>\n\n")


def test_the_reasoning_budget_closes_the_block(engines: dict[str, OnnxEngine]) -> None:
    engine = engines["r1"]
    request = parse_request({"prompt": "Why?", "max_tokens": 40, "temperature": 0.0,
                             "max_reasoning_tokens": 3})
    ids = list(engine.generate(request).token_ids)
    close = list(engine.chat_format.close_reasoning)
    assert ids[3 : 3 + len(close)] == close, "the close marker came at the budget"


@pytest.mark.parametrize("fields", [{"think": False}, {"max_reasoning_tokens": 0},
                                    {"response_format": {"type": "json_object"}}])
def test_no_reasoning_closes_the_block_in_the_prompt(
    engines: dict[str, OnnxEngine], fields: dict[str, Any]
) -> None:
    """R1 has no switch: the block its template opened is closed before the model writes."""
    engine = engines["r1"]
    request = parse_request({"prompt": "Why?", "max_tokens": 30, "temperature": 0.0, **fields})
    close = list(engine.chat_format.close_reasoning)
    result = engine.generate(request)
    plain = len(engine.encode(request))
    assert result.usage.prompt_tokens == plain + len(close)
    assert result.reasoning == ""
