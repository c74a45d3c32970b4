"""Turn request specs (JSON Schema, Lark, regex) into llguidance grammars, or refuse them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from edge_runtime.engine.constraints.limits import ConstraintLimits, check_document, check_text
from edge_runtime.errors import BadRequest

# JSON comes out on one line: one optional space after "," and ":", nothing else between
# tokens. Free whitespace lets a small model pad with newlines until it runs out of tokens.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ?",
    "key_separator": ": ?",
    "coerce_one_of": False,
    "lenient": False,
}
# Lines of a library error that are not the message: source excerpts, carets, markers.
_SAFE_INTEGER = 2**53 - 1
# Keywords whose values are schemas (not data such as enum or const values).
_ONE_SCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
               "propertyNames", "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_EXCERPT = re.compile(r"^\s*(\d+\s*\||\^+\s*$|<non-verbose/>$)")


def one_line(message: str) -> str:
    """Squeeze a library error (source excerpts, carets, several lines) into one line."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not _EXCERPT.match(line)]
    return " ".join(kept) or "rejected by the grammar compiler"


def json_schema_grammar(schema: object, limits: ConstraintLimits, what: str = "schema") -> str:
    """Return the grammar for JSON that validates against ``schema``."""
    if not isinstance(schema, Mapping):
        raise BadRequest(f"{what} must be a JSON object")
    check_document(what, schema, limits)
    from llguidance import LLMatcher

    try:
        return str(LLMatcher.grammar_from_json_schema(schema_for_library(schema)))
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{what}: {one_line(str(exc))}") from exc


def schema_for_library(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``schema`` with this module's formatting options in place of the sender's,
    and integers without bounds bounded to JSON's safe range (see :func:`bound_integers`)."""
    own = {key: value for key, value in schema.items() if key != "x-guidance"}
    return {"x-guidance": JSON_OPTIONS, **bound_integers(own)}


def bound_integers(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``schema`` whose unbounded integers lie within +-(2**53 - 1).

    A small model sampling an unbounded integer can repeat a digit until ``max_tokens``
    ends the answer unfinished; 16 digits is also all a JSON parser keeps exactly.
    """
    root = json.loads(json.dumps(schema))
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):  # "items" as a list (older drafts), or a list keyword
            stack.extend(node)
        if not isinstance(node, dict):
            continue
        kinds = node.get("type")
        if kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds):
            if "minimum" not in node and "exclusiveMinimum" not in node:
                node["minimum"] = -_SAFE_INTEGER
            if "maximum" not in node and "exclusiveMaximum" not in node:
                node["maximum"] = _SAFE_INTEGER
        stack.extend(node.get(key) for key in (*_ONE_SCHEMA, *_SCHEMA_LISTS))
        for key in _SCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                stack.extend(node[key].values())
    return dict(root)


def lark_grammar(text: object, limits: ConstraintLimits) -> str:
    """Return the grammar for a Lark-syntax grammar text (llguidance's dialect)."""
    from llguidance import LLMatcher

    return str(LLMatcher.grammar_from_lark(check_text("grammar", text, limits)))


def regex_grammar(text: object, limits: ConstraintLimits) -> str:
    """Return the grammar for output that matches the regex ``text`` as a whole."""
    from llguidance import LLMatcher

    return str(LLMatcher.grammar_from_regex(check_text("regex", text, limits)))


def response_format_grammar(spec: Mapping[str, Any], limits: ConstraintLimits) -> str:
    """Return the grammar for an OpenAI ``response_format`` of type json_object/json_schema."""
    if spec.get("type") == "json_object":
        return json_schema_grammar({"type": "object"}, limits)
    body = spec.get("json_schema")
    if not isinstance(body, Mapping):
        raise BadRequest('response_format "json_schema" needs a "json_schema" object')
    name = body.get("name", "schema")
    if not isinstance(name, str):
        raise BadRequest("json_schema.name must be a string")
    if "schema" not in body:
        raise BadRequest(f'json_schema "{name}" has no "schema"')
    return json_schema_grammar(body["schema"], limits, what=f'json_schema "{name}"')


def inline_json(schema: Mapping[str, Any]) -> str:
    """Return ``schema`` as a Lark ``%json`` rule body (same options as a whole schema)."""
    return "%json " + json.dumps(schema_for_library(schema), ensure_ascii=False)
