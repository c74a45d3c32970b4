"""Tool calls: the grammar for the model's call format and the parser for its answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import numpy as np
import pytest

from edge_runtime.engine.constraints import (
    ConstraintFactory,
    ConstraintLimits,
    parse_tool_calls,
    request_spec,
)
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.errors import BadRequest
from tests.fixtures.real_tokenizers import (
    RealTokenizer,
    closing_bias,
    constraint_factory,
    random_walk,
    real_tokenizer,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city. // not a comment # nor this",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SET_VALVE = {
    "type": "function",
    "function": {
        "name": "set_valve",
        "parameters": {
            "type": "object",
            "properties": {"valve": {"type": "integer", "minimum": 1, "maximum": 8},
                           "open": {"type": "boolean"}},
            "required": ["valve", "open"],
            "additionalProperties": False,
        },
    },
}
PING = {"type": "function", "function": {"name": "ping"}}  # no parameters at all
TOOLS: list[dict[str, Any]] = [WEATHER, SET_VALVE, PING]
PARAMETERS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"})
              for t in TOOLS}


@pytest.fixture(scope="module", params=["smollm2", "qwen"])
def real(request: pytest.FixtureRequest, converter_cache: Path) -> RealTokenizer:
    return real_tokenizer(request.param, converter_cache, request)


@pytest.fixture(scope="module")
def qwen(request: pytest.FixtureRequest, converter_cache: Path) -> RealTokenizer:
    return real_tokenizer("qwen", converter_cache, request)


@pytest.fixture(scope="module")
def factory(real: RealTokenizer) -> ConstraintFactory:
    return constraint_factory(real)


def _walk_calls(real: RealTokenizer, factory: ConstraintFactory, spec: dict[str, Any],
                seed: int, *, ending: bool = False) -> tuple[str, list[dict[str, Any]], list[int]]:
    """Walk to the end; ``ending``: the stand-in model also likes to stop or start a call."""
    bias = closing_bias(real, real.vocab_size)
    if ending:
        bias = bias.copy()
        bias[list(real.eos_ids)] = 9.0
        bias[factory.load().tokenize_str("<tool_call>", parse_special=True)] = 9.0
    walk = random_walk(factory.compile(spec), real.vocab_size, np.random.default_rng(seed),
                       bias=bias, eos_ids=real.eos_ids, max_steps=500)
    assert walk.finished, factory.decode(walk.ids)
    content, calls = parse_tool_calls(factory.decode(walk.ids))
    return content, calls, walk.ids


def _check_call(call: dict[str, Any], names: set[str]) -> None:
    assert call["type"] == "function" and call["id"].startswith("call_")
    name = call["function"]["name"]
    assert name in names
    jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMETERS[name])


def test_required_calls_always_parse_and_validate(
    real: RealTokenizer, factory: ConstraintFactory
) -> None:
    spec = request_spec(tools=TOOLS, tool_choice="required")
    assert spec is not None
    seen: set[str] = set()
    for seed in range(8):
        content, calls, _ = _walk_calls(real, factory, spec, seed)
        assert content == ""
        assert calls
        for call in calls:
            _check_call(call, set(PARAMETERS))
            seen.add(call["function"]["name"])
    assert len(seen) > 1  # the stand-in model picks among the tools


def test_a_named_function_is_the_only_one_called(
    real: RealTokenizer, factory: ConstraintFactory
) -> None:
    choice = {"type": "function", "function": {"name": "set_valve"}}
    spec = request_spec(tools=TOOLS, tool_choice=choice, parallel_tool_calls=False)
    assert spec is not None
    for seed in range(4):
        content, calls, _ = _walk_calls(real, factory, spec, seed)
        assert content == "" and len(calls) == 1
        _check_call(calls[0], {"set_valve"})


def test_auto_allows_text_or_calls(real: RealTokenizer, factory: ConstraintFactory) -> None:
    spec = request_spec(tools=TOOLS)
    assert spec is not None
    opener = factory.load().tokenize_str("<tool_call>", parse_special=True)[0]
    first = set(factory.compile(spec).allowed_ids().tolist())
    assert opener in first
    assert len(first) > real.vocab_size // 2  # text may start with almost any token
    for seed in range(6):  # a stand-in model that likes to stop answers in text
        content, calls, _ = _walk_calls(real, factory, spec, seed, ending=True)
        assert content and "<tool_call>" not in content
        for call in calls:
            _check_call(call, set(PARAMETERS))
    for seed in range(4):  # one that starts a call after some text
        constraint = factory.compile(spec)
        for token in Tokenizer(real.path).encode("Checking.\n<tool_call>"):
            constraint.consume(token)
        walk = random_walk(constraint, real.vocab_size, np.random.default_rng(seed),
                           bias=closing_bias(real, real.vocab_size), eos_ids=real.eos_ids)
        assert walk.finished
        content, calls = parse_tool_calls("Checking.\n<tool_call>" + factory.decode(walk.ids))
        assert content == "Checking." and calls
        for call in calls:
            _check_call(call, set(PARAMETERS))


def test_text_cannot_spell_out_a_special_marker(qwen: RealTokenizer) -> None:
    factory = constraint_factory(qwen)
    constraint = factory.compile(request_spec(tools=TOOLS) or {})
    spelled = [*Tokenizer(qwen.path).encode("Let me check. <tool"), *factory.load().tokenize_str(
        "_call")]
    for token in spelled:
        constraint.consume(token)
    assert not any(factory.decode([i]).startswith(">") for i in constraint.allowed_ids())


def test_auto_with_a_json_response_format_answers_json_or_calls(
    real: RealTokenizer, factory: ConstraintFactory
) -> None:
    answer = {"type": "object", "properties": {"reply": {"type": "string", "maxLength": 20}},
              "required": ["reply"], "additionalProperties": False}
    spec = request_spec(tools=TOOLS, response_format={
        "type": "json_schema", "json_schema": {"name": "reply", "schema": answer}})
    assert spec is not None
    kinds = set()
    for seed in range(8):
        content, calls, _ = _walk_calls(real, factory, spec, seed)
        if calls:
            assert content == ""
            kinds.add("calls")
        else:
            jsonschema.validate(json.loads(content), answer)
            kinds.add("json")
    assert kinds  # each answer was one or the other


def test_qwen_marks_its_call_markers_as_special_tokens(qwen: RealTokenizer) -> None:
    factory = constraint_factory(qwen)
    tokenizer = Tokenizer(qwen.path)
    text = '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'
    ids = tokenizer.encode(text)
    assert len(tokenizer.encode("<tool_call>")) == 1
    # The engine's decode drops special tokens, markers included; factory.decode keeps them.
    assert "<tool_call>" not in tokenizer.decode(ids)
    assert factory.decode(ids) == text
    assert factory.grammar(request_spec(tools=TOOLS) or {}).count("<tool_call>") == 2


def test_the_grammar_takes_calls_as_qwens_chat_template_renders_them(
    qwen: RealTokenizer,
) -> None:
    env = jinja2.Environment()
    # As the engine and transformers render it: non-ASCII as is (the grammar takes \u
    # escapes for control characters only).
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    template = env.from_string(qwen.chat_template)
    calls = [{"function": {"name": "get_weather", "arguments": {"city": "Zürich <3"}}},
             {"function": {"name": "set_valve", "arguments": {"valve": 3, "open": True}}},
             {"function": {"name": "ping", "arguments": {}}}]
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": calls}]
    rendered = template.render(messages=messages, tools=TOOLS)
    turn = rendered.rsplit("<|im_start|>assistant", 1)[1].removesuffix("<|im_end|>\n")
    factory = constraint_factory(qwen)
    constraint = factory.compile(request_spec(tools=TOOLS, tool_choice="required") or {})
    for token in Tokenizer(qwen.path).encode(turn.removeprefix("\n")):
        assert not constraint.done
        constraint.consume(token)
    assert constraint.accepting
    content, parsed = parse_tool_calls(turn)
    assert content == ""
    assert [json.loads(c["function"]["arguments"]) for c in parsed] == [
        c["function"]["arguments"] for c in calls
    ]


def test_parse_tool_calls_keeps_text_and_skips_broken_blocks() -> None:
    text = (
        "Checking both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
        "{\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"ping\", "
        "\"arguments\": \"{}\"}\n</tool_call>\n<tool_call>\n{\"name\": \"x\", \"argu"
    )
    content, calls = parse_tool_calls(text)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "ping"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert calls[1]["function"]["arguments"] == "{}"
    assert calls[0]["id"] != calls[1]["id"]
    assert content.startswith("Checking both.") and content.endswith('"argu')
    broken = '<tool_call>\n{"name": 3}\n</tool_call>'
    assert parse_tool_calls(broken) == (broken, [])
    assert parse_tool_calls("no calls here") == ("no calls here", [])


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([], "auto", "non-empty list"),
        ([{"type": "function", "function": {"name": "bad name!"}}], "auto", "letters"),
        ([{"type": "retrieval"}], "auto", '"type": "function"'),
        ([PING, PING], "auto", "used twice"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "auto",
         "JSON Schema object"),
        ([PING], {"type": "function", "function": {"name": "nope"}}, '"nope"'),
        ([PING], "sometimes", "tool_choice must be"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}],
         "required", "not"),
    ],
)
def test_bad_tools_are_refused_with_the_reason(
    tools: list[Any], choice: object, message: str, real: RealTokenizer
) -> None:
    factory = constraint_factory(real)
    with pytest.raises(BadRequest, match=message):
        factory.compile({"type": "tools", "tools": tools, "tool_choice": choice})


def test_too_many_tools_are_refused(real: RealTokenizer) -> None:
    factory = ConstraintFactory(real.path, eos_ids=real.eos_ids, vocab_size=real.vocab_size,
                                limits=ConstraintLimits(max_tools=2))
    with pytest.raises(BadRequest, match="3 tools; the limit is 2"):
        factory.grammar({"type": "tools", "tools": TOOLS})
