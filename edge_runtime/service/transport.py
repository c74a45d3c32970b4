"""The seam between the daemon and MQTT: a small protocol plus the events it reports.

A transport never calls back into the daemon; it puts events on the daemon's queue
(``queue.SimpleQueue``, safe from any thread and from signal handlers).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Protocol

from edge_runtime.service.protocol import Inbound


@dataclass(frozen=True)
class Connected:
    ok: bool
    reason: str = ""
    session_present: bool = False


@dataclass(frozen=True)
class Disconnected:
    """The connection is gone; the transport reconnects by itself after ``retry_in_s``."""

    reason: str = ""
    takeover: bool = False
    """The broker said another client took this client id's session (v5 reason 0x8E)."""
    short_lived: int = 0
    """Connections in a row the broker closed soon after accepting them (0: not this one)."""
    retry_in_s: float | None = None
    """Set when the transport backs off (a takeover, or a run of short-lived connections)."""


@dataclass(frozen=True)
class Subscribed:
    mid: int
    ok: bool


@dataclass(frozen=True)
class Published:
    """The broker answered the QoS 1 message ``mid`` (PUBACK).

    ``ok`` is False when an MQTT v5 broker refused it (reason code 0x80 or above, such as
    0x87 not authorized): it was not delivered and ``reason`` says why.
    """

    mid: int
    ok: bool = True
    reason: str = ""


@dataclass(frozen=True)
class MessageArrived:
    message: Inbound


TransportEvent = Connected | Disconnected | Subscribed | Published | MessageArrived
EventQueue = queue.SimpleQueue[object]


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes


class Transport(Protocol):
    """What the daemon needs from an MQTT client."""

    def connect(self, will: Will | None) -> None:
        """Start connecting (and reconnecting with backoff) in the background."""
        ...

    def subscribe(self, topics: list[str]) -> int:
        """Subscribe at QoS 1; return the id a later ``Subscribed`` event carries."""
        ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> int:
        """Queue a message; return its id for ``Published``. Thread-safe.

        A QoS 1 message given before the connection is up is sent once it is, and one not
        yet acknowledged is sent again after a reconnect: the caller hands it over once.
        """
        ...

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge an inbound message to the broker."""
        ...

    def disconnect(self) -> None:
        """Disconnect cleanly (no Last Will) and stop the background loop."""
        ...
