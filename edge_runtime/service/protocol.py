"""Parse and validate requests and decide where their replies go.

Nothing here touches the network or the engine: an :class:`Inbound` message goes in, a
:class:`Request` (or a :class:`RequestRejected` naming where to send the error) comes out.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationError

from edge_runtime.config import ServiceConfig
from edge_runtime.engine.request import GenerationRequest, first_problem
from edge_runtime.errors import BadRequest, EdgeRuntimeError
from edge_runtime.service.topics import Topics, topic_refusal

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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


ID_PATTERN = r"^[^/+#\x00-\x1f\x7f-\x9f\u2028\u2029]{1,128}$"
"""Request ids: printable on one line (they go into topics and logs), no topic wildcards."""
_ID = re.compile(ID_PATTERN)


class RequestBody(GenerationRequest):
    """The request payload: a :class:`GenerationRequest` plus what only the service reads."""

    id: str | None = Field(
        default=None, pattern=ID_PATTERN,
        description="Names the request in replies, cancel and de-duplication; generated when "
        "absent.",
    )
    stream: bool = Field(default=True, description="false: only the final message is sent.")
    reply_to: str | None = Field(
        default=None, min_length=1,
        description="Reply topic for MQTT 3.1.1 clients; a v5 Response Topic wins.",
    )
    deadline: float | None = Field(
        default=None, gt=0,
        description="Unix time (seconds) after which the request is answered expired instead "
        "of started.",
    )


@dataclass(frozen=True)
class Limits:
    """The service's bounds on a request (from ``[service]`` in the config)."""

    max_prompt_bytes: int
    max_max_tokens: int
    max_payload_bytes: int

    @classmethod
    def from_config(cls, service: ServiceConfig) -> Limits:
        return cls(service.max_prompt_bytes, service.max_max_tokens, service.max_payload_bytes)


@dataclass(frozen=True)
class Request:
    """A validated request, ready for the queue; its record is the body as JSON."""

    id: str
    body: RequestBody
    reply: ReplyPlace
    deadline: float | None = None

    @property
    def key(self) -> str:
        """Identify the request for de-duplication: its id and where it is answered."""
        return f"{self.id}\n{self.reply.topic}"

    def to_record(self) -> str:
        """Serialise for the durable store."""
        corr = self.reply.correlation_data
        return json.dumps({
            "id": self.id,
            "body": self.body.model_dump(mode="json", by_alias=True, exclude_defaults=True),
            "reply_topic": self.reply.topic,
            "correlation": corr.hex() if corr is not None else None,
            "deadline": self.deadline,
        })

    @classmethod
    def from_record(cls, text: str) -> Request:
        """Rebuild a request written by :meth:`to_record`; ValueError if it is damaged."""
        try:
            data = json.loads(text)
            corr = data["correlation"]
            return cls(
                id=data["id"],
                body=RequestBody.model_validate(data["body"]),
                reply=ReplyPlace(data["reply_topic"], bytes.fromhex(corr) if corr else None),
                deadline=data["deadline"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"damaged request record: {exc}") from None


class RequestRejected(Exception):
    """A request that cannot be served; ``reply`` is None when it names no usable reply place."""

    def __init__(self, error: EdgeRuntimeError, request_id: str | None, reply: ReplyPlace | None):
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id
        self.reply = reply


def _valid_id(value: Any) -> str | None:
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(payload: bytes) -> Any:
    """Decode a UTF-8 JSON payload; NaN/Infinity and deep nesting are refused."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("payload is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"payload is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        # A \ud800 escape without its pair decodes to a string that is not text.
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("payload holds a lone surrogate (\\ud800-\\udfff escape)") from None
    return data


class RequestParser:
    """Turn inbound request messages into :class:`Request` objects or rejections."""

    def __init__(self, topics: Topics, limits: Limits) -> None:
        self.topics = topics
        self.limits = limits

    def parse(self, msg: Inbound) -> Request:
        """Validate ``msg``; raise RequestRejected (with the reply place, if any) when it fails."""
        v5_reply = self._v5_reply(msg)
        if len(msg.payload) > self.limits.max_payload_bytes:
            # Not parsed at all: only a v5 Response Topic can receive the error.
            usable = v5_reply is not None and not topic_refusal(v5_reply.topic, self.topics)
            reply = v5_reply if usable else None
            raise RequestRejected(
                BadRequest(f"payload exceeds {self.limits.max_payload_bytes} bytes"), None, reply
            )
        data: Any = None
        decode_error: BadRequest | None = None
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
        if decode_error is not None:
            raise reject(decode_error)
        if not isinstance(data, dict):
            raise reject(BadRequest("payload must be a JSON object"))
        if "id" in obj and request_id is None:
            raise reject(BadRequest("id must be 1-128 characters on one line, without / + #"))
        try:
            body = RequestBody.model_validate(obj)
        except ValidationError as exc:
            raise reject(BadRequest(first_problem(exc))) from None
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
        problem = None
        if body.max_tokens is not None and body.max_tokens > self.limits.max_max_tokens:
            problem = f"max_tokens: at most {self.limits.max_max_tokens}"
        elif body.prompt_bytes > self.limits.max_prompt_bytes:
            problem = f"prompt exceeds {self.limits.max_prompt_bytes} bytes"
        if problem:
            raise RequestRejected(BadRequest(problem), request_id, reply)
        return Request(rid, body, reply, _deadline(body.deadline, msg))


def _deadline(body_deadline: float | None, msg: Inbound) -> float | None:
    candidates = [d for d in (body_deadline,) if d is not None and math.isfinite(d)]
    if msg.expiry_s is not None:
        candidates.append(msg.received_at + msg.expiry_s)
    return min(candidates) if candidates else None
