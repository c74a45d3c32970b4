"""Requests over a real broker: v5 Response Topic, 3.1.1 reply_to, plain mosquitto clients."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_chunk, assert_final

REQUEST = f"edge/{DEVICE}/request"


def test_v5_response_topic_and_correlation_data_stream_in_order(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon_factory(broker)
    client = client_factory(broker.port)
    client.subscribe("replies/v5")
    client.publish(REQUEST, {"id": "r1", "prompt": "Hello", "max_tokens": 40, "seed": 1},
                   response_topic="replies/v5", correlation=b"\x00corr-1")
    final = client.wait_final("replies/v5")
    assert_final(final)
    msgs = client.on("replies/v5")
    assert all(m.correlation == b"\x00corr-1" for m in msgs)
    chunks = client.chunks("replies/v5")
    for chunk in chunks:
        assert_chunk(chunk)
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["delta"] for c in chunks) == final["text"]
    assert final["id"] == "r1" and final["finish_reason"] in ("stop", "length")
    assert final["usage"]["completion_tokens"] > 0
    assert msgs[-1].json()["done"] is True, "the final message comes after every chunk"


def test_mqtt311_reply_to_in_the_body(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon_factory(broker, broker={"protocol": "3.1.1"})
    client = client_factory(broker.port, v5=False)
    client.subscribe("replies/old")
    client.publish(REQUEST, {"id": "r2", "prompt": "Hi", "reply_to": "replies/old",
                             "stream": False})
    final = client.wait_final("replies/old")
    assert_final(final)
    assert final["id"] == "r2" and final["text"]
    assert client.chunks("replies/old") == [], "stream false sends only the final message"


def _mosquitto_sub(port: int, topic: str, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", str(count),
         "-W", "30", "-q", "1"],
        stdout=subprocess.PIPE,
    )


def test_plain_mosquitto_pub_and_sub_default_response_topic(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon_factory(broker)
    topic = f"edge/{DEVICE}/response/plain-1"
    sub = _mosquitto_sub(broker.port, topic, 1)
    subprocess.run(["sleep", "0.3"], check=True)
    body = json.dumps({"id": "plain-1", "prompt": "Hi", "stream": False})
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                    "-t", REQUEST, "-m", body], check=True)
    out, _ = sub.communicate(timeout=40)
    final: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    assert_final(final)
    assert final["id"] == "plain-1" and final["done"] is True


def test_mosquitto_rr_round_trip(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon_factory(broker)
    body = json.dumps({"prompt": "Hi", "stream": False})
    out = subprocess.run(
        ["mosquitto_rr", "-h", "127.0.0.1", "-p", str(broker.port), "-t", REQUEST,
         "-e", "clients/rr/reply", "-m", body, "-W", "30"],
        check=True, capture_output=True, timeout=40,
    ).stdout
    final = json.loads(out.decode().strip().splitlines()[-1])
    assert_final(final)
    assert final["finish_reason"] in ("stop", "length")


def test_shared_pool_splits_requests_between_devices(
    tmp_path: Path,
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    for name in ("pool-a", "pool-b"):
        daemon_factory(broker, service={"device_id": name, "shared_group": "workers",
                                        "state_dir": str(tmp_path / name)})
    client = client_factory(broker.port)
    client.subscribe("pool/#")
    client.subscribe("edge/+/stats")
    topics = [f"pool/{i}" for i in range(10)]
    for i, topic in enumerate(topics):
        client.publish("edge/pool/request", {"id": f"p{i}", "prompt": "Hi", "stream": False},
                       response_topic=topic)
    assert client.wait_for(lambda _r: all(client.finals(t) for t in topics), 30)
    time.sleep(0.5)
    assert all(len(client.finals(t)) == 1 for t in topics)

    def accepted(device: str) -> int:
        stats = client.on(f"edge/{device}/stats")
        return stats[-1].json()["counters"]["accepted"] if stats else 0

    assert client.wait_for(lambda _r: accepted("pool-a") + accepted("pool-b") == 10, 5)
    assert accepted("pool-a") > 0 and accepted("pool-b") > 0, "both devices took work"
