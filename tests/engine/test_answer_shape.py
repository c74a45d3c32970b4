"""Answers shaped while decoding: JSON Schema, grammars and tool calls, on real tokenizers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edge_runtime.engine import EngineOptions, OnnxEngine, load_engine, parse_request
from edge_runtime.engine.types import FinishReason
from edge_runtime.errors import BadRequest
from tests.fixtures.threads import run_together

ALERT = {
    "type": "object",
    "properties": {
        "severity": {"enum": ["low", "medium", "high"]},
        "action": {"type": "string", "maxLength": 40},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["severity", "action"],
    "additionalProperties": False,
}
QUESTION = "The pump in hall 3 is overheating. Reply with the severity and the action."


def schema_request(schema: dict[str, Any], **fields: Any) -> Any:
    return parse_request({
        "messages": [{"role": "user", "content": QUESTION}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "alert",
                                                                   "schema": schema}},
        "temperature": 0.8, "max_tokens": 96, **fields,
    })


@pytest.fixture(scope="module")
def smollm2(smollm2_bundle: Callable[..., Path]) -> OnnxEngine:
    return load_engine(smollm2_bundle("int4"), EngineOptions(max_batch=3))


def test_sampled_json_answers_always_validate(smollm2: OnnxEngine) -> None:
    for seed in range(8):
        result = smollm2.generate(schema_request(ALERT, seed=seed))
        assert result.finish_reason is FinishReason.STOP, result
        jsonschema.validate(json.loads(result.text), ALERT)


def test_each_sequence_of_a_batch_keeps_its_own_constraint(smollm2: OnnxEngine) -> None:
    schemas = [ALERT, {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                       "maxItems": 3},
               {"type": "object", "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"], "additionalProperties": False}]
    results = run_together([partial(smollm2.generate, schema_request(schema, seed=i))
                            for i, schema in enumerate(schemas)], limit_s=120)
    for result, schema in zip(results, schemas, strict=True):
        jsonschema.validate(json.loads(result.text), schema)
    assert smollm2.counters.peak_batch >= 2


def test_a_regex_grammar_and_streaming(smollm2: OnnxEngine) -> None:
    request = parse_request({"prompt": "Is the valve open?", "temperature": 0.9, "seed": 3,
                             "grammar": {"type": "regex", "grammar": "(yes|no), [a-z ]{3,20}"}})
    pieces: list[str] = []
    result = smollm2.generate(request, on_delta=pieces.append)
    assert "".join(pieces) == result.text
    assert result.text.split(",")[0] in ("yes", "no")


@pytest.mark.parametrize(("fields", "match"), [
    ({"stop": ["}"], "response_format": {"type": "json_object"}}, "stop cannot be combined"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"not": {"type": "string"}}}}}, "not"),
    ({"grammar": {"type": "lark", "grammar": "start: start start"}}, "grammar"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "no tool support"),
])
def test_refused_shapes_are_bad_requests_before_any_work(
    smollm2: OnnxEngine, fields: dict[str, Any], match: str
) -> None:
    body = {"prompt": "x", **fields}
    with pytest.raises(BadRequest, match=match):
        smollm2.generate(parse_request(body))


def test_a_constrained_sequence_can_be_cancelled(smollm2: OnnxEngine) -> None:
    cancel = threading.Event()
    cancel.set()
    result = smollm2.generate(schema_request(ALERT), cancel=cancel)
    assert result.finish_reason is FinishReason.CANCELLED
