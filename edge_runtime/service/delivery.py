"""Getting finals to the broker: recorded first, handed to the transport, marked when answered.

Used from the daemon's main thread only. A final of an accepted request is recorded in the
store before it is published; while the state folder refuses writes, finals wait here, in
order, and go out once recorded (one published but not recorded would be generated and sent
again after a restart). A PUBACK is recorded at the loop's next tick (kept here while the
store refuses the write); a refused publish (v5 reason code >= 0x80) is logged, counted
and kept for the next start.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from edge_runtime.service.intake import printable
from edge_runtime.service.protocol import ReplyPlace
from edge_runtime.service.store import OutboxItem, Store, StoreError
from edge_runtime.service.telemetry import Counters
from edge_runtime.service.transport import Published, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """A QoS 1 reply handed to the transport, until the broker answers it."""

    key: str | None
    """Its row in the store; None for a reply that is not recorded (a refusal)."""
    request_id: str | None
    topic: str


@dataclass(frozen=True)
class Held:
    """A final the store could not record yet: it is published once the store takes it."""

    key: str
    payload: dict[str, Any]
    reply: ReplyPlace
    forget: bool


class Delivery:
    """The finals on their way: recorded, in flight, acknowledged, or held by a disk fault."""

    def __init__(self, transport: Transport, store: Store, counters: Counters) -> None:
        self.transport = transport
        self.store = store
        self.counters = counters
        self.fault: str | None = None
        """Why the store refuses writes now (None while it works)."""
        self._inflight: dict[int, Outgoing] = {}
        self._held: list[Held] = []
        self._acked: list[str] = []
        self._refused: list[str] = []

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def marks_pending(self) -> bool:
        return bool(self._acked or self._refused)

    def final(self, key: str, payload: dict[str, Any], reply: ReplyPlace, forget: bool) -> None:
        """Record the final of an accepted request, then publish it (or hold it)."""
        self.counters.answered += 1
        held = Held(key, payload, reply, forget)
        if self._held or not self._record_and_publish(held):
            self._held.append(held)

    def direct(self, payload: dict[str, Any], reply: ReplyPlace) -> None:
        """Publish a reply that is not recorded: a refusal, or a repeat's stored answer."""
        self.counters.answered += 1
        mid = self.transport.publish(reply.topic, json.dumps(payload).encode(),
                                     correlation_data=reply.correlation_data)
        self._inflight[mid] = Outgoing(None, payload.get("id"), reply.topic)

    def publish_item(self, item: OutboxItem) -> None:
        mid = self.transport.publish(item.topic, item.payload, correlation_data=item.correlation)
        self._inflight[mid] = Outgoing(item.key, item.key.split("\n", 1)[0], item.topic)

    def published(self, event: Published) -> None:
        """Note the broker's answer to a publish: delivered, or refused (logged, counted)."""
        sent = self._inflight.pop(event.mid, None)
        if sent is None:
            return
        if event.ok:
            if sent.key is not None:
                self._acked.append(sent.key)
            return
        self.counters.refused_by_broker += 1
        log.error("the broker refused the reply to %s on %s (%s): not delivered; check that "
                  "the broker's ACL lets this device write there", printable(sent.request_id),
                  printable(sent.topic), event.reason)
        if sent.key is not None:
            self._refused.append(sent.key)

    def store_failed(self, exc: StoreError) -> None:
        """Count a refused write; log the first of a run of them, and show it in status."""
        self.counters.store_errors += 1
        if self.fault is None:
            log.error("%s: answers wait in memory until it can be written; new requests are "
                      "refused", exc.message)
        self.fault = exc.message

    def store_works(self) -> None:
        """Note that the store took a write: the fault, if any, is over."""
        if self.fault is not None:
            log.warning("the state store can be written again")
            self.fault = None

    def flush_marks(self) -> None:
        """Record the finals the broker acknowledged or refused since the last flush."""
        for pending, record in ((self._acked, self.store.delivered),
                                (self._refused, self.store.refused)):
            if not pending:
                continue
            keys = list(pending)
            try:
                record(keys)
            except StoreError as exc:
                self.store_failed(exc)
                continue
            del pending[:len(keys)]

    def retry_held(self) -> None:
        while self._held and self._record_and_publish(self._held[0]):
            self._held.pop(0)

    def _record_and_publish(self, held: Held) -> bool:
        try:
            item = self.store.finish(held.key, held.payload, held.reply.topic,
                                     held.reply.correlation_data, forget=held.forget)
        except StoreError as exc:
            self.store_failed(exc)
            return False
        self.store_works()
        self.publish_item(item)
        return True
