"""Shaped answers over MQTT against a real broker: JSON Schema, a tool-call round trip,
reasoning kept apart. The tiny models' output is made valid by the constraint alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_chunk, assert_final

REQUEST = f"edge/{DEVICE}/request"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"site": {"enum": ["north", "south"]},
                           "hours": {"type": "integer", "minimum": 1, "maximum": 48}},
            "required": ["site", "hours"],
            "additionalProperties": False,
        },
    },
}


def test_json_schema_answers_validate_over_mqtt(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "codes": {"type": "array", "maxItems": 3,
                                                         "items": {"type": "integer"}}},
              "required": ["ok", "codes"], "additionalProperties": False}
    daemon_factory(broker, engine={"max_batch": 2})
    probe = client_factory(broker.port)
    probe.subscribe("shape/#")
    for i in range(4):
        probe.publish(REQUEST, {"prompt": "Status?", "temperature": 1.0, "seed": i,
                                "max_tokens": 120,
                                "response_format": {"type": "json_schema", "json_schema": {
                                    "name": "status", "schema": schema}}},
                      response_topic=f"shape/{i}")
    for i in range(4):
        final = probe.wait_final(f"shape/{i}", 60)
        assert_final(final)
        assert final["finish_reason"] == "stop", final
        jsonschema.validate(json.loads(final["text"]), schema)


def test_a_tool_call_round_trip(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
    styled_bundle: Callable[[str], Path],
) -> None:
    daemon_factory(broker, model={"bundle": str(styled_bundle("tools"))})
    probe = client_factory(broker.port)
    probe.subscribe("tools/#")
    question = {"role": "user", "content": "Rain tonight?"}
    probe.publish(REQUEST, {"messages": [question], "tools": [WEATHER],
                            "tool_choice": "required", "temperature": 0.7, "seed": 5,
                            "max_tokens": 150}, response_topic="tools/1")
    first = probe.wait_final("tools/1", 60)
    assert_final(first)
    assert first["finish_reason"] == "tool_calls", first
    (call,) = first["tool_calls"][:1]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        WEATHER["function"]["parameters"])
    assert "<tool_call>" not in "".join(c["delta"] for c in probe.chunks("tools/1"))

    answer = {"role": "tool", "tool_call_id": call["id"], "content": '3 mm'}
    turn = {"role": "assistant", "content": None, "tool_calls": first["tool_calls"]}
    probe.publish(REQUEST, {"messages": [question, turn, answer], "tools": [WEATHER],
                            "tool_choice": "none", "max_tokens": 12, "temperature": 0},
                  response_topic="tools/2")
    second = probe.wait_final("tools/2", 60)
    assert_final(second)
    assert second["finish_reason"] in ("stop", "length") and "tool_calls" not in second, second
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


def test_reasoning_streams_apart_from_the_answer(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
    styled_bundle: Callable[[str], Path],
) -> None:
    daemon_factory(broker, model={"bundle": str(styled_bundle("qwen3"))})
    probe = client_factory(broker.port)
    probe.subscribe("think/#")
    script = r"<think>\nthe sensor drifts\n</think>\n\nRecalibrate it\."
    probe.publish(REQUEST, {"prompt": "Why is the reading off?", "max_tokens": 100,
                            "grammar": {"type": "regex", "grammar": script}},
                  response_topic="think/1")
    final = probe.wait_final("think/1", 60)
    assert_final(final)
    assert final.get("reasoning") == "the sensor drifts", final
    assert final["text"] == "Recalibrate it."
    chunks = probe.chunks("think/1")
    for chunk in chunks:
        assert_chunk(chunk)
    assert "".join(c["delta"] for c in chunks) == final["text"]
    assert "".join(c.get("reasoning", "") for c in chunks).strip() == final["reasoning"]
