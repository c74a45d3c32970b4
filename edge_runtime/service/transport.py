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
    reason: str = ""


@dataclass(frozen=True)
class Subscribed:
    mid: int
    ok: bool


@dataclass(frozen=True)
class Published:
    """The broker acknowledged the QoS 1 message ``mid`` (PUBACK)."""

    mid: int


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
