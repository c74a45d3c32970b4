"""Validate payloads against the JSON Schemas published in docs/schemas."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def assert_final(payload: dict[str, Any]) -> None:
    validator("final").validate(payload)


def assert_chunk(payload: dict[str, Any]) -> None:
    validator("chunk").validate(payload)


def assert_request(payload: dict[str, Any]) -> None:
    validator("request").validate(payload)
