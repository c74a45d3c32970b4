"""A small test-side MQTT client that records everything it receives."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None

    def json(self) -> Any:
        return json.loads(self.payload)


class Probe:
    """Connect, subscribe, publish, and wait for messages (MQTT v5 or 3.1.1)."""

    def __init__(
        self, port: int, *, v5: bool = True, username: str | None = None,
        password: str | None = None, client_id: str | None = None, persistent: bool = False,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.v5 = v5
        self.port = port
        self.received: list[Received] = []
        self.redeliveries = 0
        """Broker retransmissions (DUP set) of a message already received, not recorded."""
        self.denied_subscriptions = 0
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        self._persistent = persistent
        self._subs: list[str] = []
        if username:
            self._client.username_pw_set(username, password)
        if tls is not None:
            ca, cert, key = tls
            self._client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.reconnect_delay_set(1, 1)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            for topic in self._subs:
                self._client.subscribe(topic, qos=1)
            self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        with self._cond:
            self.denied_subscriptions += sum(1 for r in reasons if r.is_failure)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props else None
        got = Received(msg.topic, bytes(msg.payload), bool(msg.retain), corr)
        with self._cond:
            # QoS 1 between the broker and this client: if our PUBACK was lost (the broker
            # stopped right after sending), a persistent session gets the message again with
            # DUP set. That copy is the broker's, not the daemon's, so it is dropped, as a
            # client that handles each message once would. A duplicate the daemon publishes
            # arrives without DUP and is recorded.
            if msg.dup and got in self.received:
                self.redeliveries += 1
                return
            self.received.append(got)
            self._cond.notify_all()

    def connect(self, timeout: float = 10.0) -> Probe:
        props = None
        if self.v5 and self._persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
        self._client.connect("127.0.0.1", self.port, keepalive=10,
                             clean_start=not self._persistent if self.v5 else 3,
                             properties=props)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError("test client could not connect")
        return self

    def subscribe(self, topic: str) -> None:
        """Subscribe (and again after every reconnect); wait for the SUBACK."""
        self._subs.append(topic)
        info = self._client.subscribe(topic, qos=1)
        assert info[0] == 0
        time.sleep(0.05)

    def publish(
        self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1,
        retain: bool = False, response_topic: str | None = None,
        correlation: bytes | None = None, expiry: int | None = None,
    ) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        props = None
        if self.v5 and (response_topic or correlation or expiry is not None):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
            if expiry is not None:
                props.MessageExpiryInterval = expiry
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(10)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.received if m.topic == topic]

    def finals(self, topic: str) -> list[dict[str, Any]]:
        return [d for d in (m.json() for m in self.on(topic) if m.payload) if d.get("done")]

    def chunks(self, topic: str) -> list[dict[str, Any]]:
        return [d for d in (m.json() for m in self.on(topic) if m.payload) if "seq" in d]

    def wait_final(self, topic: str, timeout: float = 20.0) -> dict[str, Any]:
        if not self.wait_for(lambda _r: bool(self.finals(topic)), timeout):
            raise TimeoutError(f"no final reply on {topic}")
        return self.finals(topic)[0]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
