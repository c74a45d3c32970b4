"""Units behind the trust rules: reply-topic patterns, content digests, log text, backoff."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from pathlib import Path

import pytest

from edge_runtime.cli.doctor_checks import judge_statuses
from edge_runtime.config import BrokerConfig, build_config
from edge_runtime.engine.session import clean_leftovers
from edge_runtime.errors import ConfigError
from edge_runtime.service.intake import printable, request_digest
from edge_runtime.service.mqtt import PahoTransport, SessionGuard
from edge_runtime.service.protocol import Inbound, Limits, Request, RequestParser
from edge_runtime.service.topics import Topics, pattern_matches, topic_refusal
from edge_runtime.service.transport import Connected, Disconnected

TOPICS = Topics("edge", "gw", reply_pattern="clients/%u/#")


@pytest.mark.parametrize(("pattern", "topic", "requester", "ok"), [
    ("clients/%u/#", "clients/alice/reply", "alice", True),
    ("clients/%u/#", "clients/alice", "alice", True),
    ("clients/%u/#", "clients/bob/reply", "alice", False),
    ("clients/%u/#", "clients/alice/reply", None, False),
    ("clients/%c/+/reply", "clients/c1/x/reply", "c1", True),
    ("clients/%c/+/reply", "clients/c1/x/y/reply", "c1", False),
    ("replies/+", "replies/a", None, True),
    ("replies/+", "replies", None, False),
])
def test_reply_patterns_match_like_acl_patterns(
    pattern: str, topic: str, requester: str | None, ok: bool
) -> None:
    assert pattern_matches(pattern, topic, requester) is ok


def test_a_requester_is_confined_to_its_own_reply_topics() -> None:
    alice = TOPICS.for_topic("edge/gw/request/alice")
    assert alice.requester == "alice"
    assert alice.response("j1") == "edge/gw/response/alice/j1"
    assert topic_refusal("clients/alice/reply", alice) is None
    assert topic_refusal("edge/gw/response/alice/x", alice) is None
    assert "pattern" in (topic_refusal("clients/bob/reply", alice) or "")
    assert topic_refusal("edge/gw/response/bob/x", alice)
    plain = TOPICS.for_topic("edge/gw/request")
    assert plain.requester is None and topic_refusal("clients/alice/reply", plain)
    assert TOPICS.is_request_topic("edge/gw/request/alice")
    assert not TOPICS.is_request_topic("edge/gw/request/a/b")
    assert TOPICS.requester_of("edge/gw/request/") is None


def test_the_default_reply_of_a_named_requester_is_in_its_namespace() -> None:
    parser = RequestParser(TOPICS.for_topic("edge/gw/request/mallory"), Limits(1000, 10, 4096))
    req = parser.parse(Inbound("edge/gw/request/mallory", b'{"id": "alice-1", "prompt": "x"}'))
    assert req.reply.topic == "edge/gw/response/mallory/alice-1"


def _req(body: dict[str, object], topic: str = "edge/gw/request") -> Request:
    parser = RequestParser(TOPICS.for_topic(topic), Limits(1000, 10, 4096))
    return parser.parse(Inbound(topic, json.dumps(body).encode(), response_topic="edge/gw/"
                                "response/x"))


def test_the_digest_follows_what_is_asked_not_how_it_is_delivered() -> None:
    base = request_digest(_req({"id": "a", "prompt": "hi"}))
    same: list[dict[str, object]] = [
        {"id": "a", "prompt": "hi", "stream": False},
        {"id": "a", "prompt": "hi", "deadline": 1e10},
        {"id": "b", "prompt": "hi"},
    ]
    for body in same:
        assert request_digest(_req(body)) == base, body
    other: list[dict[str, object]] = [
        {"id": "a", "prompt": "hi!"},
        {"id": "a", "prompt": "hi", "temperature": 0.5},
        {"id": "a", "messages": [{"role": "user", "content": "hi"}]},
    ]
    for body in other:
        assert request_digest(_req(body)) != base, body


def test_log_text_is_one_escaped_bounded_line() -> None:
    assert printable("a\nb\rc\x1b[31m\u2028d") == "a\\nb\\rc\\x1b[31m\\u2028d"
    long = printable("x" * 5000)
    assert len(long) < 250 and long.endswith("...(+4800 chars)")
    assert printable("café ok") == "café ok"


@pytest.mark.parametrize("pattern", ["$SYS/%u", "a/#/b", "a/b#", "a/x+/c", "a/%x", "a\nb"])
def test_bad_reply_patterns_are_refused_at_start(pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"service\.reply_topic_pattern"):
        build_config({"service": {"reply_topic_pattern": pattern}}, check_files=False)


def test_session_guard_backs_off_on_a_takeover_and_on_a_run_of_short_connections() -> None:
    guard = SessionGuard(backoff_s=30, backoff_max_s=900)
    guard.connected(0.0)
    assert guard.lost(600.0, takeover=False) == (False, None), "a long connection: no backoff"
    guard.connected(601.0)
    assert guard.lost(602.0, takeover=False) == (True, None), "one short connection is chance"
    guard.connected(603.0)
    assert guard.lost(604.0, takeover=False) == (True, 30)
    guard.connected(640.0)
    assert guard.lost(641.0, takeover=False) == (True, 60)
    assert guard.lost(700.0, takeover=True)[1] == 120, "a takeover while not connected"
    guard.connected(1000.0)
    assert guard.lost(3000.0, takeover=True) == (False, 30), "after a long stable connection"
    fresh = SessionGuard(backoff_s=5, backoff_max_s=20)
    for _ in range(10):
        fresh.connected(0.0)
        _, delay = fresh.lost(1.0, takeover=True)
    assert delay == 20


def _one_shot_broker(disconnect: bytes) -> tuple[int, list[int], threading.Thread]:
    """Accept MQTT v5 connections: CONNACK each, then send ``disconnect`` and close."""
    server = socket.create_server(("127.0.0.1", 0))
    connects: list[int] = []

    def serve() -> None:
        server.settimeout(4)
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.recv(1024)  # CONNECT
                    connects.append(1)
                    conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: success, no properties
                    time.sleep(0.2)
                    conn.sendall(disconnect)
                    time.sleep(0.1)
        except OSError:
            server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], connects, thread


def test_a_v5_session_taken_over_is_named_and_not_fought_back() -> None:
    port, connects, thread = _one_shot_broker(b"\xe0\x02\x8e\x00")  # DISCONNECT 0x8E
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    config = BrokerConfig(url=f"mqtt://127.0.0.1:{port}", takeover_backoff_s=30,
                          reconnect_min_s=1, reconnect_max_s=1)
    transport = PahoTransport(config, "cloned", events)
    transport.connect(None)
    try:
        got = [events.get(timeout=5), events.get(timeout=5)]
        assert isinstance(got[0], Connected) and got[0].ok
        lost = got[1]
        assert isinstance(lost, Disconnected) and lost.takeover, lost
        assert lost.retry_in_s == 30
        time.sleep(2.5)
        assert len(connects) == 1, "no reconnect within the backoff"
    finally:
        transport.disconnect()
        thread.join(6)


def test_leftover_cache_staging_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / "abc.tmp-999999"
    live = tmp_path / "abc.tmp-1"  # pid 1 is always alive
    for folder in (dead, live):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")
    (tmp_path / "abc").mkdir()
    assert clean_leftovers(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc", "abc.tmp-1"]


def test_doctor_tells_its_own_daemon_from_a_clone() -> None:
    mine = {"state": "online", "boot": "b0", "instance": "i0", "host": "gw",
            "session_takeovers": 0, "short_connections": 0}
    assert judge_statuses("gw", [mine], "b0").status == "OK"
    clone = dict(mine, boot="b1", instance="i1", host="gw")
    assert judge_statuses("gw", [mine, clone], "b0").status == "FAIL"
    twin = dict(mine, instance="i9")
    assert judge_statuses("gw", [mine, twin], "b0").status == "FAIL"
    fought = dict(mine, short_connections=3)
    assert judge_statuses("gw", [fought], "b0").status == "WARN"
    assert judge_statuses("gw", [dict(clone, state="offline")], "b0").status == "OK"
