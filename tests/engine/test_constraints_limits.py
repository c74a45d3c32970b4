"""Hostile and invalid specs: refused with a one-line reason, or ended, never a stuck worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.engine.constraints import Constraint, ConstraintFactory, ConstraintLimits
from edge_runtime.errors import BadRequest
from tests.fixtures.real_tokenizers import RealTokenizer, constraint_factory, real_tokenizer


@pytest.fixture(scope="module")
def real(request: pytest.FixtureRequest, converter_cache: Path) -> RealTokenizer:
    return real_tokenizer("qwen", converter_cache, request)  # the big vocabulary


@pytest.fixture(scope="module")
def factory(real: RealTokenizer) -> ConstraintFactory:
    return constraint_factory(real)


def limited(real: RealTokenizer, **limits: Any) -> ConstraintFactory:
    """A factory with other limits that shares the session's built tokenizer."""
    factory = ConstraintFactory(real.path, eos_ids=real.eos_ids, vocab_size=real.vocab_size,
                                limits=ConstraintLimits(**limits))
    factory._tokenizer = constraint_factory(real).load()
    return factory


def schema(body: object) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": body}}


def nested_objects(levels: int) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        body = {"type": "object", "properties": {"a": body}, "required": ["a"]}
    return body


def drive(constraint: Constraint, vocab_size: int, steps: int = 60) -> int:
    """Take the most likely allowed token of random logits ``steps`` times; return steps run."""
    rng = np.random.default_rng(0)
    for step in range(steps):
        if constraint.done:
            return step
        logits = rng.standard_normal(vocab_size).astype(np.float32)
        constraint.apply(logits)
        constraint.consume(int(np.argmax(logits)))
    return steps


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (schema({"type": "objekt"}), "Invalid type: objekt"),
        (schema({"type": "string", "format": "soundex"}), "Unknown format: soundex"),
        (schema({"type": "string", "pattern": "(?=a)b"}), "look-around"),
        (schema({"not": {"type": "string"}}), 'Unimplemented keys: ["not"]'),
        (schema({"type": "array", "uniqueItems": True}), "uniqueItems"),
        (schema({"$ref": "http://example.com/s.json"}), "example.com"),
        (schema({"type": "integer", "minimum": 5, "maximum": 2}), "minimum (5) is greater"),
        (schema([1, 2]), "must be a JSON object"),
        ({"type": "json_schema", "json_schema": {"name": "s"}}, 'has no "schema"'),
        ({"type": "json_schema"}, 'needs a "json_schema" object'),
        ({"type": "lark", "grammar": "start: foo\n"}, 'unknown name: "foo"'),
        ({"type": "lark", "grammar": 'start: "a" |\n  | (('}, "Expected token"),
        ({"type": "lark", "grammar": "start: <|not_a_token|>\n"}, "unknown special token"),
        ({"type": "regex", "grammar": "a(b"}, "unclosed group"),
        ({"type": "regex", "grammar": "  "}, "non-empty string"),
        ({"type": "yaml"}, "unknown constraint type 'yaml'"),
    ],
)
def test_invalid_specs_are_refused_in_one_line(
    spec: dict[str, Any], message: str, factory: ConstraintFactory
) -> None:
    with pytest.raises(BadRequest) as caught:
        factory.compile(spec)
    assert message in caught.value.message
    assert "\n" not in caught.value.message
    assert caught.value.code == "bad_request"


def test_size_and_nesting_are_checked_before_compiling(real: RealTokenizer) -> None:
    factory = limited(real, max_spec_bytes=4096, max_depth=16)
    with pytest.raises(BadRequest, match="bytes as JSON; the limit is 4096"):
        factory.compile(schema({"enum": [f"value-{i}" for i in range(1000)]}))
    with pytest.raises(BadRequest, match="bytes; the limit is 4096"):
        factory.compile({"type": "regex", "grammar": "a" * 5000})
    with pytest.raises(BadRequest, match="nests deeper than 16 levels"):
        factory.compile(schema(nested_objects(8)))  # 17 levels of JSON
    factory.compile(schema(nested_objects(7)))  # 15 levels
    # Deep enough to overflow a recursive walk: refused, not a RecursionError.
    with pytest.raises(BadRequest, match="nests deeper"):
        factory.compile(schema(nested_objects(5000)))


def test_a_huge_enum_within_the_limits_compiles_and_holds(factory: ConstraintFactory,
                                                          real: RealTokenizer) -> None:
    values = [f"sensor-{i:04d}" for i in range(3000)]
    constraint = factory.compile(schema({"enum": values}))
    ids: list[int] = []
    rng = np.random.default_rng(1)
    while not constraint.done:
        logits = rng.standard_normal(real.vocab_size).astype(np.float32)
        constraint.apply(logits)
        ids.append(int(np.argmax(logits)))
        constraint.consume(ids[-1])
    assert factory.decode(ids).strip('"') in values


@pytest.mark.parametrize(
    "spec",
    [
        schema({"type": "string", "pattern": "^(a+)+$"}),  # catastrophic for backtracking
        schema({"type": "string", "pattern": "^(a|aa)*b$"}),
        {"type": "regex", "grammar": "(a{1,1000}){1,1000}"},
        {"type": "regex", "grammar": "(?s:.*)a(?s:.){25}"},  # a DFA of 2^25 states if built
        {"type": "lark", "grammar": 'start: x\nx: x x | x x x | "a" | "aa"\n'},  # ambiguous
        {"type": "lark", "grammar": 'start: start "a" | "a"\n'},  # left-recursive
    ],
)
def test_nasty_but_valid_grammars_stay_fast(spec: dict[str, Any], factory: ConstraintFactory,
                                            real: RealTokenizer) -> None:
    started = time.perf_counter()
    drive(factory.compile(spec), real.vocab_size)
    # Each of the ~60 masks stays under the budget or the sequence would have ended.
    assert time.perf_counter() - started < 60 * factory.limits.mask_budget_ms / 1e3


def test_a_grammar_past_the_parser_limits_ends_the_sequence(factory: ConstraintFactory,
                                                            real: RealTokenizer) -> None:
    choices = " | ".join(f'"w{i}x{i * 7}"' for i in range(3000))
    constraint = factory.compile({"type": "lark", "grammar": f"start: {choices}\n"})
    with pytest.raises(BadRequest, match="3001 items; max is 2000") as caught:
        drive(constraint, real.vocab_size)
    assert "\n" not in caught.value.message and len(caught.value.message) < 300
    with pytest.raises(BadRequest, match="3001 items"):  # and stays ended
        constraint.apply(np.zeros(real.vocab_size, dtype=np.float32))


def test_a_lexer_past_its_state_limit_ends_the_sequence(real: RealTokenizer) -> None:
    factory = limited(real, max_lexer_states=2_000)
    grammar = "start: T\nT: /(?s:.{0,300})/ & ~/(?s:.*)a(?s:.){12}b(?s:.*)/\n"
    with pytest.raises(BadRequest, match="grammar"):
        drive(factory.compile({"type": "lark", "grammar": grammar}), real.vocab_size, steps=200)


def test_a_grammar_over_the_size_limit_is_refused(real: RealTokenizer) -> None:
    factory = limited(real, max_grammar_size=200)
    properties = {f"field{i}": {"type": "integer"} for i in range(60)}
    with pytest.raises(BadRequest, match="grammar"):
        factory.compile(schema({"type": "object", "properties": properties}))


def test_a_step_over_the_time_budget_ends_the_sequence(real: RealTokenizer) -> None:
    factory = limited(real, mask_budget_ms=0.001)
    with pytest.raises(BadRequest, match="the limit is 0 ms"):
        factory.compile({"type": "json_object"})  # the first mask is computed on compile
    constraint = constraint_factory(real).compile(schema({"type": "string"}))
    constraint._budget_s = 1e-6  # compiled under the default budget, run under a tiny one
    constraint.prepare()
    with pytest.raises(BadRequest, match="to find the next allowed tokens"):
        constraint.apply(np.zeros(real.vocab_size, dtype=np.float32))
    with pytest.raises(BadRequest, match="to find the next allowed tokens"):
        constraint.consume(0)  # the sequence stays ended
