"""The examples in docs/protocol.md match the published JSON Schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.service.schemas import SCHEMA_DIR, assert_chunk, assert_final, assert_request

PROTOCOL_MD = SCHEMA_DIR.parent / "protocol.md"


def _json_examples(path: Path) -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", path.read_text(), flags=re.S)
    examples: list[dict] = []
    for block in blocks:
        try:
            examples.append(json.loads(block))
        except json.JSONDecodeError:  # a block of one object per line (stream chunks)
            examples += [json.loads(line) for line in block.splitlines() if line.strip()]
    return examples


def test_every_json_example_in_the_protocol_doc_validates() -> None:
    examples = _json_examples(PROTOCOL_MD)
    kinds = {"request": 0, "chunk": 0, "final": 0, "status": 0}
    for example in examples:
        if example.get("done"):
            assert_final(example)
            kinds["final"] += 1
        elif "seq" in example:
            assert_chunk(example)
            kinds["chunk"] += 1
        elif "state" in example:
            kinds["status"] += 1
        else:
            assert_request(example)
            kinds["request"] += 1
    assert all(kinds.values()), kinds


@pytest.mark.parametrize("name", ["request", "chunk", "final"])
def test_schema_files_are_valid_json_schema(name: str) -> None:
    from tests.service.schemas import validator

    assert validator(name).schema["title"].startswith("edge-runtime")


def test_published_schemas_are_the_ones_the_models_generate() -> None:
    from edge_runtime.service.schemas import stale

    assert stale(SCHEMA_DIR) == [], "run: edge-runtime schemas --write docs/schemas"
