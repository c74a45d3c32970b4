"""The reply payloads: stream chunks and final messages, as typed models.

These classes are the reply half of the protocol: the payloads are built from them and the
published JSON Schemas (docs/schemas) are generated from them (``edge-runtime schemas``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from edge_runtime.engine.request import StrictModel, ToolCall
from edge_runtime.engine.types import GenerationResult
from edge_runtime.errors import EdgeRuntimeError, error_codes

MAX_ERROR_MESSAGE = 500


def _codes(schema: dict[str, Any]) -> None:
    schema["properties"]["code"]["enum"] = list(error_codes())


class ErrorInfo(StrictModel):
    """Why a request failed: a stable code (see docs/protocol.md) and a message for people."""

    model_config = ConfigDict(json_schema_extra=_codes)

    code: str
    message: str


class PromptTokensDetails(StrictModel):
    cached_tokens: int = Field(ge=0, description="Prompt tokens read from the prefix cache.")


class UsageInfo(StrictModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: PromptTokensDetails | None = None


class TimingsInfo(StrictModel):
    """Seconds: waiting for a slot, reading the prompt, slot to first token, first to last."""

    queued_s: float = Field(ge=0)
    prefill_s: float | None = Field(default=None, ge=0)
    decode_s: float | None = Field(default=None, ge=0)
    first_token_s: float | None = Field(default=None, ge=0)
    tokens_per_s: float | None = Field(default=None, ge=0)


def _some_text(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [{"properties": {"delta": {"minLength": 1}}, "required": ["delta"]},
                       {"required": ["reasoning"]}]


class Chunk(StrictModel):
    """A stream chunk: ``seq`` counts from 0; the deltas join to the final text, the
    reasoning pieces to its reasoning."""

    model_config = ConfigDict(json_schema_extra=_some_text)

    id: str
    seq: int = Field(ge=0)
    delta: str = ""
    reasoning: str | None = Field(default=None, min_length=1)


def _error_iff_failed(schema: dict[str, Any]) -> None:
    schema["if"] = {"properties": {"finish_reason": {"const": "error"}}}
    schema["then"] = {"required": ["error"]}
    schema["else"] = {"not": {"required": ["error"]}}


class Final(StrictModel):
    """Exactly one per request, through the durable outbox; it carries the whole text."""

    model_config = ConfigDict(json_schema_extra=_error_iff_failed)

    id: str | None = Field(description="null only when the request carried no usable id.")
    done: Literal[True]
    text: str
    finish_reason: Literal["stop", "length", "cancelled", "error", "tool_calls"]
    error: ErrorInfo | None = None
    reasoning: str | None = Field(
        default=None, description="A reasoning model's reasoning, kept apart from text."
    )
    tool_calls: list[ToolCall] | None = Field(
        default=None, description='Calls to the offered tools (finish_reason "tool_calls").'
    )
    usage: UsageInfo
    timings: TimingsInfo


def _dump(model: StrictModel) -> bytes:
    """Serialise what was set: an ``id`` of None is sent as null, an absent field not at all."""
    return model.model_dump_json(exclude_unset=True).encode()


def chunk_payload(request_id: str, seq: int, delta: str, reasoning: str = "") -> bytes:
    """Build one stream chunk (answer text, reasoning, or both)."""
    extra = {"reasoning": reasoning} if reasoning else {}
    return _dump(Chunk(id=request_id, seq=seq, delta=delta, **extra))


def _timings(result: GenerationResult) -> TimingsInfo:
    t, u = result.timings, result.usage
    rate = None
    if t.decode_s > 0 and u.completion_tokens > 1:
        rate = (u.completion_tokens - 1) / t.decode_s
    extra = {} if rate is None else {"tokens_per_s": round(rate, 2)}
    return TimingsInfo(
        queued_s=round(t.queued_s, 4), prefill_s=round(t.prefill_s, 4),
        decode_s=round(t.decode_s, 4), first_token_s=round(t.first_token_s, 4), **extra,
    )


def _usage(prompt: int = 0, completion: int = 0, cached: int | None = None) -> UsageInfo:
    details = {} if cached is None else {
        "prompt_tokens_details": PromptTokensDetails(cached_tokens=cached)}
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion, **details)


def final_payload(request_id: str, result: GenerationResult) -> dict[str, Any]:
    """Build the final message for a finished generation."""
    u = result.usage
    extra: dict[str, Any] = {}
    if result.reasoning:
        extra["reasoning"] = result.reasoning
    if result.tool_calls:
        extra["tool_calls"] = [ToolCall.model_validate(c) for c in result.tool_calls]
    final = Final(
        id=request_id, done=True, text=result.text, finish_reason=result.finish_reason.value,
        usage=_usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens),
        timings=_timings(result), **extra,
    )
    return final.model_dump(mode="json", exclude_unset=True)


def error_payload(
    request_id: str | None, error: EdgeRuntimeError, text: str = "", queued_s: float = 0.0
) -> dict[str, Any]:
    """Build the final message for a request that failed with ``error``."""
    final = Final(
        id=request_id, done=True, text=text, finish_reason="error",
        error=ErrorInfo(code=error.code, message=error.message[:MAX_ERROR_MESSAGE]),
        usage=_usage(), timings=TimingsInfo(queued_s=round(max(queued_s, 0.0), 4)),
    )
    return final.model_dump(mode="json", exclude_unset=True)


def cancelled_payload(request_id: str) -> dict[str, Any]:
    """Build the final message for a request cancelled before it started."""
    final = Final(id=request_id, done=True, text="", finish_reason="cancelled", usage=_usage(),
                  timings=TimingsInfo(queued_s=0.0))
    return final.model_dump(mode="json", exclude_unset=True)
