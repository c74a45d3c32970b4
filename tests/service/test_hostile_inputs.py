"""Hostile and malformed requests against one running daemon: it answers each once and stays up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE, base_config
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_final

REQUEST = f"edge/{DEVICE}/request"
DEFAULT = f"edge/{DEVICE}/response/"


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes | dict[str, Any]
    code: str | None  # None: names no reply place, so no reply at all
    v5_reply: bool = True  # send a v5 Response Topic (else rely on the body / default topic)
    reply_on: str | None = None  # where the error must land when not the v5 topic
    retain: bool = False

    def body(self) -> bytes:
        if isinstance(self.payload, bytes):
            return self.payload
        return json.dumps(self.payload).encode()


def _ok(**extra: Any) -> dict[str, Any]:
    return {"prompt": "hello", **extra}


LONG_PROMPT = " ".join(f"word{i}" for i in range(3000))  # ~20 kB, far past 256 tokens

CASES = [
    Case("invalid-json", b"{not json", "bad_request"),
    Case("invalid-utf8", b'{"prompt": "\xff\xfe\xfd"}', "bad_request"),
    Case("empty-payload", b"", "bad_request"),
    Case("json-array", b"[1, 2, 3]", "bad_request"),
    Case("json-string", b'"hello"', "bad_request"),
    Case("json-null", b"null", "bad_request"),
    Case("prompt-wrong-type", {"prompt": 5}, "bad_request"),
    Case("messages-wrong-type", {"messages": "hi"}, "bad_request"),
    Case("message-bad-role", {"messages": [{"role": "robot", "content": "x"}]}, "bad_request"),
    Case("message-missing-content", {"messages": [{"role": "user"}]}, "bad_request"),
    Case("prompt-and-messages", _ok(messages=[{"role": "user", "content": "x"}]), "bad_request"),
    Case("missing-prompt", {"id": "h-missing", "reply_to": "hostile/missing-prompt"},
         "bad_request", v5_reply=False, reply_on="hostile/missing-prompt"),
    Case("empty-prompt", {"prompt": ""}, "bad_request"),
    Case("negative-max-tokens", _ok(max_tokens=-5), "bad_request"),
    Case("zero-max-tokens", _ok(max_tokens=0), "bad_request"),
    Case("huge-max-tokens", _ok(max_tokens=10**12), "bad_request"),
    Case("float-max-tokens", _ok(max_tokens=3.5), "bad_request"),
    Case("bool-max-tokens", _ok(max_tokens=True), "bad_request"),
    Case("nan-temperature", b'{"prompt": "x", "temperature": NaN}', "bad_request"),
    Case("infinite-top-p", b'{"prompt": "x", "top_p": Infinity}', "bad_request"),
    Case("overflowing-float", b'{"prompt": "x", "temperature": 1e999}', "bad_request"),
    Case("negative-temperature", _ok(temperature=-1.0), "bad_request"),
    Case("top-p-above-one", _ok(top_p=1.5), "bad_request"),
    Case("huge-seed", _ok(seed=2**70), "bad_request"),
    Case("negative-seed", _ok(seed=-1), "bad_request"),
    Case("stop-not-a-list", _ok(stop="x"), "bad_request"),
    Case("stop-empty-string", _ok(stop=[""]), "bad_request"),
    Case("stop-too-many", _ok(stop=[f"s{i}" for i in range(100)]), "bad_request"),
    Case("stream-wrong-type", _ok(stream="yes"), "bad_request"),
    Case("unknown-field", _ok(max_token=5), "bad_request"),
    Case("id-wrong-type", _ok(id=5), "bad_request"),
    Case("id-with-slash", _ok(id="a/b"), "bad_request"),
    Case("one-megabyte-payload", _ok(pad="x" * 1_000_000), "bad_request"),
    Case("deep-nesting", b"[" * 100_000 + b"]" * 100_000, "bad_request"),
    Case("deep-nesting-in-field", b'{"prompt": "x", "n": ' + b"[" * 50_000 + b"]" * 50_000
         + b"}", "bad_request"),
    Case("prompt-longer-than-context", _ok(prompt=LONG_PROMPT), "context_length_exceeded"),
    Case("prompt-over-byte-limit", _ok(prompt="y" * 70_000), "bad_request"),
    Case("expired-deadline", _ok(deadline=time.time() - 60), "expired"),
    Case("wildcard-plus-reply-to", _ok(id="h-plus", reply_to="a/+/b"), "bad_request",
         v5_reply=False, reply_on=DEFAULT + "h-plus"),
    Case("wildcard-hash-reply-to", _ok(id="h-hash", reply_to="a/#"), "bad_request",
         v5_reply=False, reply_on=DEFAULT + "h-hash"),
    Case("dollar-reply-to", _ok(id="h-dollar", reply_to="$SYS/broker"), "bad_request",
         v5_reply=False, reply_on=DEFAULT + "h-dollar"),
    Case("foreign-device-reply-to", _ok(id="h-foreign", reply_to="edge/dev2/response/x"),
         "bad_request", v5_reply=False, reply_on=DEFAULT + "h-foreign"),
    Case("own-request-topic-reply-to", _ok(id="h-loop", reply_to=REQUEST), "bad_request",
         v5_reply=False, reply_on=DEFAULT + "h-loop"),
    Case("own-status-topic-reply-to", _ok(id="h-status", reply_to=f"edge/{DEVICE}/status"),
         "bad_request", v5_reply=False, reply_on=DEFAULT + "h-status"),
    Case("overlong-reply-to", _ok(id="h-long", reply_to="a" * 300), "bad_request",
         v5_reply=False, reply_on=DEFAULT + "h-long"),
    Case("empty-reply-to", _ok(id="h-empty", reply_to=""), "bad_request",
         v5_reply=False, reply_on=DEFAULT + "h-empty"),
    Case("reply-to-wrong-type", _ok(id="h-type", reply_to=["a"]), "bad_request",
         v5_reply=False, reply_on=DEFAULT + "h-type"),
    Case("retained-request", _ok(), "bad_request", retain=True),
    Case("no-reply-place-garbage", b"\x00\x01garbage", None, v5_reply=False),
    Case("no-reply-place-bad-prompt", {"prompt": 5}, None, v5_reply=False),
]


@pytest.fixture(scope="module")
def hostile_env(
    tmp_path_factory: pytest.TempPathFactory, service_bundle: Path
) -> Iterator[tuple[MosquittoBroker, DaemonProcess, Probe]]:
    folder = tmp_path_factory.mktemp("hostile")
    broker = MosquittoBroker(folder / "broker")
    broker.start()
    config = base_config(broker, service_bundle, folder / "state")
    daemon = DaemonProcess(folder / "daemon", config).start()
    probe = Probe(broker.port).connect()
    probe.subscribe("hostile/#")
    probe.subscribe(DEFAULT + "#")
    probe.subscribe(f"edge/{DEVICE}/stats")
    yield broker, daemon, probe
    probe.publish(REQUEST, b"", retain=True)  # clear the retained request
    probe.close()
    daemon.kill()
    broker.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_exactly_one_error(
    hostile_env: tuple[MosquittoBroker, DaemonProcess, Probe], case: Case
) -> None:
    _, daemon, probe = hostile_env
    reply = f"hostile/{case.name}" if case.v5_reply else case.reply_on
    before = len(probe.received)
    probe.publish(REQUEST, case.body(), retain=case.retain,
                  response_topic=reply if case.v5_reply else None)
    if reply is None:
        time.sleep(0.5)
        replies = [m for m in probe.received[before:] if m.topic.startswith(("hostile/", DEFAULT))]
        assert replies == [], "a request naming no reply place gets no reply"
    else:
        final = probe.wait_final(reply, timeout=15)
        assert_final(final)
        assert final["finish_reason"] == "error"
        assert final["error"]["code"] == case.code, final["error"]
        time.sleep(0.2)
        assert len(probe.on(reply)) == 1, "exactly one reply"
    assert daemon.alive


def test_daemon_still_answers_and_counts_unanswerable(
    hostile_env: tuple[MosquittoBroker, DaemonProcess, Probe],
) -> None:
    _, daemon, probe = hostile_env
    probe.publish(REQUEST, {"id": "after", "prompt": "still there?", "max_tokens": 8},
                  response_topic="hostile/after")
    final = probe.wait_final("hostile/after")
    assert final["finish_reason"] in ("stop", "length") and final["text"]
    stats_topic = f"edge/{DEVICE}/stats"
    start = len(probe.on(stats_topic))
    assert probe.wait_for(lambda _r: len(probe.on(stats_topic)) > start, timeout=5)
    counters = probe.on(stats_topic)[-1].json()["counters"]
    unanswerable = sum(1 for c in CASES if c.code is None)
    assert counters["unanswerable"] >= unanswerable
    assert daemon.alive
