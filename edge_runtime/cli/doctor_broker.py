"""Try a real MQTT CONNECT to the configured broker, with a short timeout."""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.config import BrokerConfig


@dataclass(frozen=True)
class ProbeResult:
    """What the broker said: ``ok``, and the reason text when not."""

    ok: bool
    reason: str
    auth_refused: bool = False


def _client(broker: BrokerConfig, password: str | None) -> mqtt.Client:
    protocol = mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edge-runtime-doctor-{os.getpid()}",
        protocol=protocol,
    )
    if broker.username:
        client.username_pw_set(broker.username, password)
    if broker.uses_tls:
        tls = broker.tls
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    return client


def probe_broker(broker: BrokerConfig, password: str | None, timeout: float = 3.0) -> ProbeResult:
    """Connect, wait for CONNACK, disconnect; never raises for network trouble."""
    answer: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        answer["reason"] = reason

    client = _client(broker, password)
    client.on_connect = on_connect
    client.connect_timeout = timeout
    try:
        client.connect(broker.host, broker.port, keepalive=max(5, int(timeout) * 2))
        deadline = time.monotonic() + timeout
        while "reason" not in answer and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except (OSError, ssl.SSLError) as exc:
        return ProbeResult(False, f"cannot connect: {exc}")
    finally:
        client.disconnect()
    reason = answer.get("reason")
    if reason is None:
        return ProbeResult(False, f"no CONNACK within {timeout:g} s (is this an MQTT broker?)")
    if reason.is_failure:
        text = str(reason)
        auth = any(word in text.lower() for word in ("authori", "password", "user name"))
        return ProbeResult(False, f"broker refused the connection: {text}", auth_refused=auth)
    return ProbeResult(True, "connected")


def read_topic(
    broker: BrokerConfig, password: str | None, topic: str, window: float = 2.0,
    timeout: float = 3.0,
) -> tuple[bool, list[bytes]]:
    """Return (connected, the messages on ``topic`` within ``window`` s: retained first).

    Uses the doctor's own client id, so the daemon's session is left alone.
    """
    got: dict[str, Any] = {}
    payloads: list[bytes] = []

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        got["reason"] = reason
        if not reason.is_failure:
            client.subscribe(topic, qos=1)
            got["since"] = time.monotonic()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payloads.append(bytes(msg.payload))

    client = _client(broker, password)
    client.on_connect, client.on_message = on_connect, on_message
    client.connect_timeout = timeout
    try:
        client.connect(broker.host, broker.port, keepalive=max(5, int(timeout) * 2))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - got.get(
                "since", time.monotonic()) < window:
            client.loop(timeout=0.1)
    except (OSError, ssl.SSLError):
        return False, []
    finally:
        client.disconnect()
    reason = got.get("reason")
    return reason is not None and not reason.is_failure, payloads
