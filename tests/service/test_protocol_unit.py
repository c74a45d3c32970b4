"""Request parsing and the reply-topic rule, without a broker."""

from __future__ import annotations

import json
import time

import pytest

from edge_runtime.config import ServiceConfig
from edge_runtime.service.protocol import (
    Inbound,
    Limits,
    Request,
    RequestParser,
    RequestRejected,
)
from edge_runtime.service.topics import Topics, topic_refusal
from tests.service.schemas import assert_request

TOPICS = Topics("edge", "dev1")
PARSER = RequestParser(TOPICS, Limits.from_config(ServiceConfig(device_id="dev1")))


def _msg(body: dict, **fields: object) -> Inbound:
    return Inbound("edge/dev1/request", json.dumps(body).encode(), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("clients/alice/reply", True),
        ("edge/dev1/response/abc", True),
        ("edge/dev1/response/a/b", True),
        ("edge/dev2/response/abc", False),
        ("edge/dev1/request", False),
        ("edge/dev1/cancel", False),
        ("edge/dev1/status", False),
        ("edge/pool/request", False),
        ("a/+/b", False),
        ("a/#", False),
        ("$SYS/x", False),
        ("", False),
        ("x" * 257, False),
        ("a\x00b", False),
        ("edgex/dev2/anything", True),
    ],
)
def test_reply_topic_rule(topic: str, allowed: bool) -> None:
    assert (topic_refusal(topic, TOPICS) is None) == allowed


def test_v5_response_topic_wins_over_reply_to_and_keeps_correlation() -> None:
    req = PARSER.parse(_msg({"id": "x", "prompt": "hi", "reply_to": "b/b"},
                            response_topic="a/a", correlation_data=b"\x01"))
    assert req.reply.topic == "a/a" and req.reply.correlation_data == b"\x01"


def test_default_reply_topic_and_generated_id() -> None:
    assert PARSER.parse(_msg({"id": "x", "prompt": "hi"})).reply.topic == (
        "edge/dev1/response/x"
    )
    anonymous = PARSER.parse(_msg({"prompt": "hi"}))
    assert anonymous.reply.topic == f"edge/dev1/response/{anonymous.id}"


def test_message_expiry_and_deadline_take_the_earlier() -> None:
    now = time.time()
    req = PARSER.parse(_msg({"prompt": "hi", "deadline": now + 100}, expiry_s=5,
                            received_at=now))
    assert req.deadline == pytest.approx(now + 5)


def test_record_round_trip_keeps_everything() -> None:
    body = {"id": "r", "messages": [{"role": "system", "content": "s"},
                                    {"role": "user", "content": "u"}],
            "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 3, "min_p": 0.1,
            "repetition_penalty": 1.1, "seed": 9, "stop": ["\n"], "stream": False,
            "chat": True}
    assert_request(body)
    req = PARSER.parse(_msg(body, response_topic="z/z", correlation_data=b"\xff"))
    assert Request.from_record(req.to_record()) == req


def test_unusable_id_without_reply_place_has_nowhere_to_answer() -> None:
    with pytest.raises(RequestRejected) as info:
        PARSER.parse(_msg({"id": 5, "prompt": "hi"}))
    assert info.value.reply is None and info.value.error.code == "bad_request"
