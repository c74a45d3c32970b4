"""JSON Schema and grammar constraints on the real SmolLM2 and Qwen2.5 tokenizers.

A seeded random-logit stand-in model draws only allowed tokens until the constraint is
done; every answer must then parse and validate, as the engine would decode it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from edge_runtime.engine.constraints import ConstraintFactory, request_spec
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.errors import BadRequest, InternalError
from tests.fixtures.real_tokenizers import (
    RealTokenizer,
    closing_bias,
    constraint_factory,
    random_walk,
    real_tokenizer,
)

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {
            "severity": {"enum": ["low", "medium", "high", "critical"]},
            "action": {"type": "string", "enum": ["ignore", "notify", "shutdown"]},
        },
        "required": ["severity", "action"],
        "additionalProperties": False,
    },
    "arrays with length bounds": {
        "type": "object",
        "properties": {
            "readings": {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                         "maxItems": 4},
            "labels": {"type": "array", "items": {"type": "string", "maxLength": 8},
                       "maxItems": 2},
        },
        "required": ["readings", "labels"],
        "additionalProperties": False,
    },
    "numbers with ranges": {
        "type": "object",
        "properties": {
            "temperature": {"type": "number", "minimum": -40, "maximum": 85},
            "humidity": {"type": "integer", "minimum": 0, "maximum": 100},
            "battery": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        },
        "required": ["temperature", "humidity", "battery"],
        "additionalProperties": False,
    },
    "required and optional fields": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "note": {"type": "string", "maxLength": 12},
            "urgent": {"type": "boolean"},
            "owner": {"type": ["string", "null"], "maxLength": 12},
        },
        "required": ["id"],
        "additionalProperties": False,
    },
    "strings with patterns": {
        "type": "object",
        "properties": {
            "serial": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "day": {"type": "string", "format": "date"},
        },
        "required": ["serial", "day"],
        "additionalProperties": False,
    },
    "refs and anyOf": {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"},
                                                             "y": {"type": "integer"}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object",
        "properties": {
            "shape": {"anyOf": [
                {"type": "object", "properties": {"center": {"$ref": "#/$defs/point"},
                                                  "r": {"type": "integer", "minimum": 1}},
                 "required": ["center", "r"], "additionalProperties": False},
                {"type": "array", "items": {"$ref": "#/$defs/point"}, "minItems": 2,
                 "maxItems": 3},
            ]},
        },
        "required": ["shape"],
        "additionalProperties": False,
    },
}
WALKS = {"smollm2": 6, "qwen": 4}


@pytest.fixture(scope="module", params=["smollm2", "qwen"])
def real(request: pytest.FixtureRequest, converter_cache: Path) -> RealTokenizer:
    return real_tokenizer(request.param, converter_cache, request)


@pytest.fixture(scope="module")
def factory(real: RealTokenizer) -> ConstraintFactory:
    return constraint_factory(real)


@pytest.fixture(scope="module")
def engine_tokenizer(real: RealTokenizer) -> Tokenizer:
    return Tokenizer(real.path)


def _schema_spec(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                   "strict": True}}


@pytest.mark.parametrize("case", list(SCHEMAS))
def test_every_sampled_answer_parses_and_validates(
    case: str, real: RealTokenizer, factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    schema = SCHEMAS[case]
    bias = closing_bias(real, real.vocab_size)
    for seed in range(WALKS[real.name]):
        constraint = factory.compile(_schema_spec(schema))
        walk = random_walk(constraint, real.vocab_size, np.random.default_rng(seed),
                           bias=bias, eos_ids=real.eos_ids)
        text = engine_tokenizer.decode(walk.ids)
        assert walk.finished, f"seed {seed}: not finished after {len(walk.ids)} tokens: {text!r}"
        jsonschema.validate(json.loads(text), schema)
        assert "\n" not in text  # one line: no whitespace between tokens but single spaces


def test_any_json_object(
    real: RealTokenizer, factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    bias = closing_bias(real, real.vocab_size)
    for seed in range(3):
        constraint = factory.compile({"type": "json_object"})
        walk = random_walk(constraint, real.vocab_size, np.random.default_rng(seed), bias=bias,
                           eos_ids=real.eos_ids, max_steps=600)
        assert walk.finished
        assert isinstance(json.loads(engine_tokenizer.decode(walk.ids)), dict)


def test_end_of_sequence_only_once_the_answer_is_complete(
    real: RealTokenizer, factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    constraint = factory.compile(_schema_spec(SCHEMAS["enums"]))
    first = constraint.allowed_ids()
    assert not set(first) & set(real.eos_ids)
    assert {engine_tokenizer.decode([int(i)])[:1] for i in first} == {"{"}
    answer = engine_tokenizer.encode('{"severity": "high", "action": "notify"}')
    for token in answer[:-1]:
        constraint.consume(token)
        assert not set(constraint.allowed_ids()) & set(real.eos_ids)
        assert not constraint.accepting
    constraint.consume(answer[-1])
    assert constraint.accepting
    assert constraint.done  # nothing can follow the closing brace
    assert set(constraint.allowed_ids()) == set(real.eos_ids)


def test_model_rows_beyond_the_tokenizer_are_never_allowed(real: RealTokenizer) -> None:
    factory = constraint_factory(real, extra_rows=64)
    constraint = factory.compile({"type": "regex", "grammar": "(?s:.{1,40})"})
    rng = np.random.default_rng(0)
    for _ in range(5):
        logits = np.full(real.vocab_size + 64, 50.0, dtype=np.float32)
        constraint.apply(logits)
        assert np.isneginf(logits[real.vocab_size:]).all()
        assert np.isfinite(logits[: real.vocab_size]).sum() > real.vocab_size // 2
        allowed = np.flatnonzero(np.isfinite(logits))
        constraint.consume(int(rng.choice(allowed)))
    with pytest.raises(ValueError, match="entries"):
        constraint.apply(np.zeros(real.vocab_size, dtype=np.float32))


def test_prepared_mask_equals_the_one_computed_in_place(
    real: RealTokenizer, factory: ConstraintFactory
) -> None:
    spec = _schema_spec(SCHEMAS["numbers with ranges"])
    plain, prepared = factory.compile(spec), factory.compile(spec)
    rng = np.random.default_rng(3)
    while not plain.done:
        base = rng.standard_normal(real.vocab_size).astype(np.float32)
        a, b = base.copy(), base.copy()
        prepared.prepare()
        plain.apply(a)
        prepared.apply(b)
        np.testing.assert_array_equal(a, b)
        token = int(np.argmax(a))
        plain.consume(token)
        prepared.consume(token)
    assert prepared.done


def test_forced_tokens_skip_ahead_and_keep_the_answer_valid(
    real: RealTokenizer, factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    schema = SCHEMAS["enums"]
    constraint = factory.compile(_schema_spec(schema))
    rng = np.random.default_rng(5)
    ids: list[int] = []
    forced_total = 0
    while not constraint.done:
        forced = constraint.forced()
        forced_total += len(forced)
        for token in forced:
            constraint.consume(token)
            ids.append(token)
        if constraint.done:
            break
        logits = rng.standard_normal(real.vocab_size).astype(np.float32)
        constraint.apply(logits)
        token = int(np.argmax(logits))
        constraint.consume(token)
        ids.append(token)
    assert forced_total > 0  # the property names are fixed by the schema
    jsonschema.validate(json.loads(engine_tokenizer.decode(ids)), schema)


def test_a_token_the_mask_forbade_is_an_internal_error(
    real: RealTokenizer, factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    constraint = factory.compile({"type": "json_object"})
    constraint.apply(np.zeros(real.vocab_size, dtype=np.float32))
    with pytest.raises(InternalError, match="not allowed"):
        constraint.consume(engine_tokenizer.encode("hello")[0])
    with pytest.raises(InternalError, match="not allowed"):
        constraint.consume(real.eos_ids[0])
    constraint.consume(engine_tokenizer.encode("{")[0])  # the state did not move


def test_compiled_grammars_are_shared_but_states_are_not(
    factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    spec = _schema_spec(SCHEMAS["enums"])
    first = factory.compile(spec)
    for token in engine_tokenizer.encode('{"severity": "low"'):
        first.consume(token)
    second = factory.compile(spec)
    assert {engine_tokenizer.decode([int(i)])[:1] for i in second.allowed_ids()} == {"{"}


def test_lark_and_regex_grammars(
    real: RealTokenizer, factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    cases = [
        ({"type": "lark", "grammar": 'start: answer\nanswer: "yes" | "no" | "maybe"\n'},
         r"yes|no|maybe"),
        ({"type": "regex", "grammar": r"[0-9]{3}-[0-9]{4}"}, r"[0-9]{3}-[0-9]{4}"),
        ({"type": "lark",  # left-recursive: the Earley parser takes it
          "grammar": 'start: list\nlist: list "," ITEM | ITEM\nITEM: /[a-z]{1,5}/\n'},
         r"[a-z]{1,5}(,[a-z]{1,5})*"),
    ]
    for spec, pattern in cases:
        for seed in range(3):
            walk = random_walk(factory.compile(spec), real.vocab_size,
                               np.random.default_rng(seed), eos_ids=real.eos_ids, max_steps=60)
            text = engine_tokenizer.decode(walk.ids)
            if walk.finished:
                assert re.fullmatch(pattern, text), (spec, text)
            else:  # a list may go on; whatever was drawn is still a prefix of one
                assert re.fullmatch(pattern, text.rstrip(",")), (spec, text)


def test_the_senders_formatting_options_are_ignored(
    real: RealTokenizer, factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    schema = {"x-guidance": {"whitespace_pattern": "[\\n ]{1,64}", "lenient": True},
              **SCHEMAS["enums"]}
    walk = random_walk(factory.compile(_schema_spec(schema)), real.vocab_size,
                       np.random.default_rng(0), bias=closing_bias(real, real.vocab_size),
                       eos_ids=real.eos_ids)
    assert "\n" not in engine_tokenizer.decode(walk.ids)
    with pytest.raises(BadRequest, match="not"):  # lenient would have dropped "not"
        factory.compile(_schema_spec({"x-guidance": {"lenient": True},
                                      "not": {"type": "string"}}))


def test_request_fields_become_one_spec() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert request_spec() is None
    assert request_spec(response_format={"type": "text"}) is None
    assert request_spec(response_format=schema) == schema
    assert request_spec(grammar={"type": "regex", "grammar": "a+"}) == {"type": "regex",
                                                                       "grammar": "a+"}
    assert request_spec(tools=tools, tool_choice="none") is None
    assert request_spec(tools=tools, tool_choice="none", response_format=schema) == schema
    spec = request_spec(tools=tools, response_format=schema, parallel_tool_calls=False)
    assert spec is not None and spec["type"] == "tools" and spec["tool_choice"] is None
    for bad in (
        {"response_format": schema, "grammar": {"type": "regex", "grammar": "a"}},
        {"grammar": {"type": "lark", "grammar": "start: \"a\""}, "tools": tools},
        {"grammar": {"type": "ebnf", "grammar": "x"}},
        {"response_format": {"type": "yaml"}},
    ):
        with pytest.raises(BadRequest):
            request_spec(**bad)


def test_unbounded_integers_stop_at_json_s_safe_range(
    real: RealTokenizer, factory: ConstraintFactory, engine_tokenizer: Tokenizer
) -> None:
    spec = _schema_spec({"type": "object", "properties": {"n": {"type": "integer"}},
                         "required": ["n"], "additionalProperties": False})
    for text, complete in (('{"n": -9007199254740991}', True),
                           ('{"n": 9007199254740992}', False),
                           ('{"n": 90071992547409910}', False)):
        constraint = factory.compile(spec)
        ids = engine_tokenizer.encode(text)
        taken = 0
        for token in ids:
            if token not in constraint.allowed_ids():
                break
            constraint.consume(token)
            taken += 1
        assert (taken == len(ids) and constraint.done) == complete, text
