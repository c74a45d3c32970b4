"""Fakes for unit tests of one layer: an in-memory transport and a scripted engine."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_runtime.engine.request import GenerationRequest
from edge_runtime.engine.scheduler import SchedulerCounters
from edge_runtime.engine.types import (
    DeltaCallback,
    FinishReason,
    GenerationResult,
    Timings,
    Usage,
)
from edge_runtime.service.protocol import Inbound
from edge_runtime.service.transport import (
    Connected,
    EventQueue,
    MessageArrived,
    Published,
    Subscribed,
    Will,
)


@dataclass(frozen=True)
class Sent:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    correlation: bytes | None
    mid: int

    def json(self) -> Any:
        return json.loads(self.payload)


class FakeTransport:
    """Records what the daemon sends; the test drives connects, messages and PUBACKs.

    Like paho, it takes publishes before the connection is up and sends them once it is:
    each ``publish`` call is one message the broker gets, and a PUBACK only comes while
    connected. With ``autoconnect=False`` the connection is up only after ``come_online``.
    """

    def __init__(
        self, events: EventQueue, *, auto_puback: bool = True, autoconnect: bool = True
    ) -> None:
        self.events = events
        self.auto_puback = auto_puback
        self.autoconnect = autoconnect
        self.connected = False
        self._unacked: list[int] = []
        self.sent: list[Sent] = []
        self.acks: list[int] = []
        self.on_ack: Callable[[int], None] | None = None
        self.will: Will | None = None
        self.subscriptions: list[str] = []
        self.disconnected = False
        self._mid = 0
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            self._mid += 1
            return self._mid

    def connect(self, will: Will | None) -> None:
        self.will = will
        if self.autoconnect:
            self.come_online()

    def come_online(self) -> None:
        """The broker accepts the connection: report it, then PUBACK what waited for it."""
        with self._lock:
            self.connected = True
            waiting, self._unacked = self._unacked, []
        self.events.put(Connected(True))
        for mid in waiting:
            self.events.put(Published(mid))

    def subscribe(self, topics: list[str]) -> int:
        self.subscriptions = list(topics)
        mid = self._next()
        self.events.put(Subscribed(mid, True))
        return mid

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                correlation_data: bytes | None = None) -> int:
        mid = self._next()
        with self._lock:
            self.sent.append(Sent(topic, payload, qos, retain, correlation_data, mid))
            if self.auto_puback and qos and not self.connected:
                self._unacked.append(mid)
                return mid
        if self.auto_puback and qos:
            self.events.put(Published(mid))
        return mid

    def ack(self, mid: int, qos: int) -> None:
        if self.on_ack is not None:
            self.on_ack(mid)
        self.acks.append(mid)

    def disconnect(self) -> None:
        self.disconnected = True

    def deliver(self, topic: str, payload: bytes | dict[str, Any], **fields: Any) -> int:
        """Simulate the broker delivering a message to the daemon; return its mid."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        mid = self._next()
        self.events.put(MessageArrived(Inbound(topic, body, mid=mid, **fields)))
        return mid

    def on(self, topic: str) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.topic == topic]

    def finals(self, topic: str) -> list[dict[str, Any]]:
        return [s.json() for s in self.on(topic) if s.json().get("done")]


class FakeEngine:
    """Write ``max_tokens`` words, one every ``token_s``; ``stuck`` ignores cancel."""

    def __init__(
        self, token_s: float = 0.0, stuck: threading.Event | None = None, capacity: int = 1
    ) -> None:
        self.token_s = token_s
        self.stuck = stuck
        self.capacity = capacity
        self.counters = SchedulerCounters()
        self.calls = 0
        self.closed = False

    @property
    def info(self) -> dict[str, object]:
        return {"model": "fake", "context_length": 64}

    def generate(self, request: GenerationRequest, *, cancel: threading.Event | None = None,
                 on_delta: DeltaCallback | None = None,
                 on_reasoning: DeltaCallback | None = None,
                 queued_since: float | None = None) -> GenerationResult:
        self.calls += 1
        queued = time.monotonic() - queued_since if queued_since is not None else 0.0
        if self.stuck is not None:
            self.stuck.wait()
        pieces: list[str] = []
        reason = FinishReason.LENGTH
        for i in range(request.max_tokens or 4):
            if cancel is not None and cancel.is_set():
                reason = FinishReason.CANCELLED
                break
            time.sleep(self.token_s)
            pieces.append(f"w{i} ")
            if on_delta:
                on_delta(pieces[-1])
        text = "".join(pieces)
        timings = Timings(queued_s=queued, decode_s=0.01)
        return GenerationResult(text, reason, Usage(3, len(pieces)), timings)

    def close(self) -> None:
        self.closed = True
