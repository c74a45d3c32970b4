"""The published JSON Schemas, generated from the request and reply models.

``edge-runtime schemas --write docs/schemas`` rewrites the files; the test suite fails when
the committed files differ from what the models say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_runtime.service.protocol import RequestBody
from edge_runtime.service.replies import Chunk, Final

BASE_ID = "https://edge-runtime.invalid/schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
MODELS: dict[str, tuple[type[BaseModel], str, str]] = {
    "request": (RequestBody, "edge-runtime request",
                "Published to <prefix>/<device>/request at QoS 1, not retained. Exactly one of "
                "prompt or messages."),
    "chunk": (Chunk, "edge-runtime stream chunk",
              "Published to the reply topic at QoS 0 while generating: a best-effort preview. "
              "seq counts from 0; the deltas join to the final text."),
    "final": (Final, "edge-runtime final reply",
              "Exactly one per request, published to the reply topic at QoS 1 through the "
              "durable outbox. Carries the whole text."),
}


def schema(name: str) -> dict[str, Any]:
    """Return the JSON Schema of one payload kind."""
    model, title, description = MODELS[name]
    body = model.model_json_schema(mode="validation")
    body.pop("title", None)
    body.pop("description", None)
    return {"$schema": DRAFT, "$id": f"{BASE_ID}/{name}.schema.json", "title": title,
            "description": description, **body}


def render(name: str) -> str:
    return json.dumps(schema(name), indent=2, ensure_ascii=False) + "\n"


def write(folder: Path) -> list[Path]:
    """Write every schema into ``folder``; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in MODELS:
        path = folder / f"{name}.schema.json"
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written


def stale(folder: Path) -> list[str]:
    """Return the names whose file in ``folder`` differs from the models."""
    return [name for name in MODELS
            if not (folder / f"{name}.schema.json").is_file()
            or (folder / f"{name}.schema.json").read_text(encoding="utf-8") != render(name)]
