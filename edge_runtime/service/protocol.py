"""Parse and validate requests and decide where their replies go.

Nothing here touches the network or the engine: an :class:`Inbound` message goes in, a
:class:`Request` (or a :class:`RequestRejected` naming where to send the error) comes out.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.engine.types import ChatMessage, Prompt, SamplingParams
from edge_runtime.errors import BadRequest, EdgeRuntimeError
from edge_runtime.service.topics import Topics, topic_refusal

MAX_ID_CHARS = 128
PARSE_LIMIT_BYTES = 16 * 1024 * 1024
"""Above this a payload is not even parsed; only a v5 Response Topic can receive the error."""


@dataclass(frozen=True)
class Inbound:
    """One message as the transport received it."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    dup: bool = False
    """The broker is delivering this message again (it was not acknowledged before)."""
    mid: int = 0
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry_s: int | None = None
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ReplyPlace:
    topic: str
    correlation_data: bytes | None = None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class MessageBody(_Body):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


class RequestBody(_Body):
    id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    prompt: str | None = None
    messages: list[MessageBody] | None = Field(default=None, min_length=1, max_length=256)
    chat: bool = True
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[str] | None = Field(default=None, max_length=16)
    stream: bool = True
    reply_to: str | None = None
    deadline: float | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class Limits:
    max_prompt_bytes: int = 64 * 1024
    default_max_tokens: int = 256
    max_max_tokens: int = 2048
    max_payload_bytes: int = 256 * 1024


@dataclass(frozen=True)
class Request:
    """A validated request, ready for the queue (and for the durable record)."""

    id: str
    prompt: Prompt
    chat: bool
    params: SamplingParams
    stream: bool
    reply: ReplyPlace
    deadline: float | None = None

    @property
    def key(self) -> str:
        """Identify the request for de-duplication: its id and where it is answered."""
        return f"{self.id}\n{self.reply.topic}"

    def to_record(self) -> str:
        """Serialise for the durable store."""
        p = self.params
        return json.dumps(
            {
                "id": self.id,
                "prompt": self.prompt if isinstance(self.prompt, str) else list(self.prompt),
                "chat": self.chat,
                "params": {
                    "max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p,
                    "top_k": p.top_k, "min_p": p.min_p,
                    "repetition_penalty": p.repetition_penalty, "seed": p.seed,
                    "stop": list(p.stop),
                },
                "stream": self.stream,
                "reply_topic": self.reply.topic,
                "correlation": self.reply.correlation_data.hex()
                if self.reply.correlation_data is not None else None,
                "deadline": self.deadline,
            }
        )

    @classmethod
    def from_record(cls, text: str) -> Request:
        """Rebuild a request written by :meth:`to_record`."""
        data = json.loads(text)
        params = dict(data["params"])
        params["stop"] = tuple(params["stop"])
        corr = data["correlation"]
        return cls(
            id=data["id"],
            prompt=data["prompt"],
            chat=data["chat"],
            params=SamplingParams(**params),
            stream=data["stream"],
            reply=ReplyPlace(data["reply_topic"], bytes.fromhex(corr) if corr else None),
            deadline=data["deadline"],
        )


class RequestRejected(Exception):
    """A request that cannot be served; ``reply`` is None when it names no usable reply place."""

    def __init__(self, error: EdgeRuntimeError, request_id: str | None, reply: ReplyPlace | None):
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id
        self.reply = reply


def _valid_id(value: Any) -> str | None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        return None
    if not value.isprintable() or set(value) & set("/+#\0"):
        return None
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(payload: bytes) -> Any:
    """Decode a UTF-8 JSON payload; NaN/Infinity and deep nesting are refused."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("payload is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"payload is not valid JSON: {exc}") from None


class RequestParser:
    """Turn inbound request messages into :class:`Request` objects or rejections."""

    def __init__(self, topics: Topics, limits: Limits) -> None:
        self.topics = topics
        self.limits = limits

    def parse(self, msg: Inbound) -> Request:
        """Validate ``msg``; raise RequestRejected (with the reply place, if any) when it fails."""
        v5_reply = self._v5_reply(msg)
        data: Any = None
        decode_error: BadRequest | None = None
        if len(msg.payload) <= PARSE_LIMIT_BYTES:
            try:
                data = decode_json(msg.payload)
            except BadRequest as exc:
                decode_error = exc
        obj = data if isinstance(data, dict) else {}
        request_id = _valid_id(obj.get("id"))
        reply, reply_problem = self._reply_place(obj, v5_reply, request_id)

        def reject(error: EdgeRuntimeError) -> RequestRejected:
            return RequestRejected(error, request_id, reply)

        if reply_problem:
            raise reject(BadRequest(reply_problem))
        if msg.retain:
            raise reject(BadRequest("retained requests are refused; publish without retain"))
        if len(msg.payload) > self.limits.max_payload_bytes:
            raise reject(BadRequest(f"payload exceeds {self.limits.max_payload_bytes} bytes"))
        if decode_error is not None:
            raise reject(decode_error)
        if not isinstance(data, dict):
            raise reject(BadRequest("payload must be a JSON object"))
        if "id" in obj and request_id is None:
            raise reject(BadRequest("id must be 1-128 printable characters without / + #"))
        try:
            body = RequestBody.model_validate(obj)
        except ValidationError as exc:
            raise reject(BadRequest(_first_problem(exc))) from None
        return self._build(body, msg, request_id, reply)

    def _v5_reply(self, msg: Inbound) -> ReplyPlace | None:
        if msg.response_topic is None:
            return None
        return ReplyPlace(msg.response_topic, msg.correlation_data)

    def _reply_place(
        self, obj: dict[str, Any], v5_reply: ReplyPlace | None, request_id: str | None
    ) -> tuple[ReplyPlace | None, str | None]:
        """Pick the reply place; a refused topic falls back to the default response topic."""
        candidate = v5_reply
        if candidate is None and "reply_to" in obj:
            raw = obj["reply_to"]
            if not isinstance(raw, str):
                fallback = self._default(request_id)
                return fallback, "reply_to must be a string"
            candidate = ReplyPlace(raw)
        if candidate is None:
            return self._default(request_id), None
        problem = topic_refusal(candidate.topic, self.topics)
        if problem:
            return self._default(request_id), problem
        return candidate, None

    def _default(self, request_id: str | None) -> ReplyPlace | None:
        return None if request_id is None else ReplyPlace(self.topics.response(request_id))

    def _build(
        self, body: RequestBody, msg: Inbound, request_id: str | None, reply: ReplyPlace | None
    ) -> Request:
        rid = request_id or uuid.uuid4().hex
        reply = reply or ReplyPlace(self.topics.response(rid))

        def reject(message: str) -> RequestRejected:
            return RequestRejected(BadRequest(message), request_id, reply)

        prompt = self._prompt(body, reject)
        max_tokens = body.max_tokens or self.limits.default_max_tokens
        if max_tokens > self.limits.max_max_tokens:
            raise reject(f"max_tokens: at most {self.limits.max_max_tokens}")
        stop = tuple(body.stop or ())
        if any(not s or len(s) > 64 for s in stop):
            raise reject("stop: each entry must be 1-64 characters")
        params = SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
            top_k=body.top_k, min_p=body.min_p, repetition_penalty=body.repetition_penalty,
            seed=body.seed, stop=stop,
        )
        deadline = _deadline(body.deadline, msg)
        return Request(rid, prompt, body.chat, params, body.stream, reply, deadline)

    def _prompt(self, body: RequestBody, reject: Any) -> Prompt:
        if (body.prompt is None) == (body.messages is None):
            raise reject("give exactly one of prompt or messages")
        if body.prompt is not None:
            size = len(body.prompt.encode("utf-8", "surrogatepass"))
            prompt: Prompt = body.prompt
        else:
            assert body.messages is not None
            msgs = [ChatMessage(role=m.role, content=m.content) for m in body.messages]
            size = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in msgs)
            prompt = msgs
        if size == 0:
            raise reject("prompt is empty")
        if size > self.limits.max_prompt_bytes:
            raise reject(f"prompt exceeds {self.limits.max_prompt_bytes} bytes")
        return prompt


def _deadline(body_deadline: float | None, msg: Inbound) -> float | None:
    candidates = [d for d in (body_deadline,) if d is not None and math.isfinite(d)]
    if msg.expiry_s is not None:
        candidates.append(msg.received_at + msg.expiry_s)
    return min(candidates) if candidates else None


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "payload"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    return f"{loc}: {err['msg']}"
