"""Build the reply payloads: stream chunks and final messages (see docs/schemas)."""

from __future__ import annotations

import json
from typing import Any

from edge_runtime.engine.types import GenerationResult
from edge_runtime.errors import EdgeRuntimeError


def chunk_payload(request_id: str, seq: int, delta: str) -> bytes:
    """Build one stream chunk."""
    return json.dumps({"id": request_id, "seq": seq, "delta": delta}).encode()


def _timings(result: GenerationResult | None, queued_s: float) -> dict[str, float]:
    if result is None:
        return {"queued_s": round(queued_s, 4)}
    t = result.timings
    out = {
        "queued_s": round(queued_s, 4), "prefill_s": round(t.prefill_s, 4),
        "decode_s": round(t.decode_s, 4), "first_token_s": round(t.first_token_s, 4),
    }
    if t.decode_s > 0 and result.usage.completion_tokens > 1:
        out["tokens_per_s"] = round((result.usage.completion_tokens - 1) / t.decode_s, 2)
    return out


def final_payload(request_id: str, result: GenerationResult, queued_s: float) -> dict[str, Any]:
    """Build the final message for a finished generation."""
    u = result.usage
    return {
        "id": request_id, "done": True, "text": result.text,
        "finish_reason": result.finish_reason.value,
        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "total_tokens": u.total_tokens},
        "timings": _timings(result, queued_s),
    }


def error_payload(
    request_id: str | None, error: EdgeRuntimeError, text: str = "", queued_s: float = 0.0
) -> dict[str, Any]:
    """Build the final message for a request that failed with ``error``."""
    return {
        "id": request_id, "done": True, "text": text, "finish_reason": "error",
        "error": {"code": error.code, "message": error.message[:500]},
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "timings": _timings(None, queued_s),
    }


def cancelled_payload(request_id: str) -> dict[str, Any]:
    """Build the final message for a request cancelled before it started."""
    return {
        "id": request_id, "done": True, "text": "", "finish_reason": "cancelled",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "timings": {"queued_s": 0.0},
    }
