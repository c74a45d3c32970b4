"""The paho-mqtt (v2 callback API) transport: MQTT v5 by default, 3.1.1 on request.

Callbacks only turn paho's arguments into events on the daemon's queue; they never raise
and never do work. Inbound QoS 1 messages are acknowledged manually (``ack``) once the
daemon has recorded them. The session is persistent (clean start off, session expiry set),
so messages that arrive while the daemon is down, or were delivered but not yet
acknowledged, are delivered again when it comes back.

Two clients with one client id (a cloned SD card) take the session from each other: the
broker closes the older connection, with reason 0x8E when it says why (MQTT v5; Mosquitto
from 2.0.15) and without a word otherwise. Reconnecting at once would make them fight, so
after a takeover, or after a second connection in a row that the broker closed soon after
accepting it, the transport waits ``broker.takeover_backoff_s``, doubling each time up to
``broker.takeover_backoff_max_s``, and says so in its ``Disconnected`` event.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_runtime.config import BrokerConfig, resolve_secret
from edge_runtime.service.protocol import Inbound
from edge_runtime.service.transport import (
    Connected,
    Disconnected,
    EventQueue,
    MessageArrived,
    Published,
    Subscribed,
    TransportEvent,
    Will,
)

log = logging.getLogger(__name__)

SESSION_TAKEN_OVER = 0x8E
SHORT_LIVED_S = 10.0
"""A connection the broker closes sooner than this after accepting it counts as short-lived."""


class SessionGuard:
    """Decide how long to wait before reconnecting after the broker closed the connection.

    Every back-off doubles the last one; a connection that lasts ``backoff_max_s`` resets.
    """

    def __init__(self, backoff_s: float, backoff_max_s: float) -> None:
        self.backoff_s = backoff_s
        self.backoff_max_s = max(backoff_max_s, backoff_s)
        self.strikes = 0
        self._backoffs = 0
        self._connected_at: float | None = None

    def connected(self, now: float) -> None:
        self._connected_at = now

    def lost(self, now: float, takeover: bool) -> tuple[bool, float | None]:
        """Account a lost connection; return (short-lived, delay before reconnecting or None)."""
        lasted = None if self._connected_at is None else now - self._connected_at
        self._connected_at = None
        if lasted is not None and lasted >= self.backoff_max_s:
            self.strikes = self._backoffs = 0
        short = lasted is not None and lasted < SHORT_LIVED_S
        if takeover or short:
            self.strikes += 1
        if not takeover and self.strikes < 2:
            return short, None
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** min(self._backoffs, 30))
        self._backoffs += 1
        return short, delay


class PahoTransport:
    """A :class:`~edge_runtime.service.transport.Transport` over paho-mqtt."""

    def __init__(self, config: BrokerConfig, client_id: str, events: EventQueue) -> None:
        self._config = config
        self._events: EventQueue = events
        self.v5 = config.protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else False,
            manual_ack=True,
        )
        self._client.max_queued_messages_set(0)
        self._normal_delays = (max(1, int(config.reconnect_min_s)),
                               max(1, int(config.reconnect_max_s)))
        self._client.reconnect_delay_set(*self._normal_delays)
        self._guard = SessionGuard(config.takeover_backoff_s, config.takeover_backoff_max_s)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._configure_security()

    def _configure_security(self) -> None:
        cfg = self._config
        if cfg.username:
            self._client.username_pw_set(cfg.username, cfg.password())
        if cfg.uses_tls:
            tls = cfg.tls
            context = ssl.create_default_context(
                cafile=str(resolve_secret(tls.ca_file)) if tls.ca_file else None
            )
            if tls.cert_file and tls.key_file:
                context.load_cert_chain(
                    str(resolve_secret(tls.cert_file)), str(resolve_secret(tls.key_file))
                )
            self._client.tls_set_context(context)

    def _put(self, event: TransportEvent) -> None:
        self._events.put(event)

    # paho callbacks: enqueue only, never raise.
    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        try:
            ok = not reason.is_failure
            if ok:
                self._guard.connected(time.monotonic())
            self._put(Connected(ok, str(reason), bool(getattr(flags, "session_present", False))))
        except Exception:  # a callback must never raise
            log.exception("connect callback")

    def _on_connect_fail(self, _c: Any, _u: Any) -> None:
        try:
            where = f"{self._config.host}:{self._config.port}"
            self._put(Connected(False, f"{where} unreachable (network or TLS failure)"))
        except Exception:
            log.exception("connect-fail callback")

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        try:
            takeover = getattr(reason, "value", None) == SESSION_TAKEN_OVER
            short, delay = self._guard.lost(time.monotonic(), takeover)
            if delay is None:
                self._client.reconnect_delay_set(*self._normal_delays)
            else:
                self._client.reconnect_delay_set(max(1, int(delay)), max(1, int(delay)))
            strikes = self._guard.strikes if short or takeover else 0
            self._put(Disconnected(str(reason), takeover, strikes, delay))
        except Exception:
            log.exception("disconnect callback")

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        try:
            self._put(Subscribed(mid, all(not r.is_failure for r in reasons)))
        except Exception:
            log.exception("subscribe callback")

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        try:
            refused = bool(getattr(reason, "is_failure", False))
            self._put(Published(mid, not refused, str(reason) if refused else ""))
        except Exception:
            log.exception("publish callback")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            self._put(MessageArrived(self._inbound(msg)))
        except Exception:
            log.exception("message callback")

    def _inbound(self, msg: paho.MQTTMessage) -> Inbound:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        expiry = getattr(props, "MessageExpiryInterval", None) if props else None
        return Inbound(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            dup=bool(msg.dup),
            mid=msg.mid,
            response_topic=response_topic,
            correlation_data=bytes(correlation) if correlation is not None else None,
            expiry_s=int(expiry) if expiry is not None else None,
        )

    def connect(self, will: Will | None) -> None:
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=1, retain=True)
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._config.session_expiry_s
        self._client.connect_async(
            self._config.host,
            self._config.port,
            keepalive=self._config.keepalive,
            clean_start=False if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()

    def subscribe(self, topics: list[str]) -> int:
        if self.v5:
            # Retained messages only on a new subscription; see retained requests as retained.
            options = SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=1)
            _, mid = self._client.subscribe([(t, options) for t in topics])
        else:
            _, mid = self._client.subscribe([(t, 1) for t in topics])
        return int(mid or 0)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> int:
        properties = None
        if self.v5 and correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        return int(info.mid)

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._client.ack(mid, qos)

    def disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
