"""Handle one inbound message: validate, de-duplicate, record durably, queue, then ack.

The order matters: a request is acknowledged to the broker only after it is recorded (or
answered), so a crash before the ack makes the broker deliver it again, and the record then
answers the repeat instead of generating twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from edge_runtime.errors import BadRequest, Busy, EdgeRuntimeError, Expired, ShuttingDown
from edge_runtime.service.protocol import (
    Inbound,
    ReplyPlace,
    Request,
    RequestParser,
    RequestRejected,
    decode_json,
)
from edge_runtime.service.replies import cancelled_payload, error_payload
from edge_runtime.service.store import Store, StoreError
from edge_runtime.service.telemetry import Counters
from edge_runtime.service.worker import Job, JobQueue, Worker

log = logging.getLogger(__name__)

SendFinal = Callable[[str | None, dict[str, Any], ReplyPlace], None]


class Intake:
    """Turn request and cancel messages into queued jobs and immediate replies."""

    def __init__(
        self,
        parser: RequestParser,
        store: Store,
        jobs: JobQueue,
        worker: Worker,
        counters: Counters,
        send_final: SendFinal,
        outbox_limit: int,
    ) -> None:
        self.parser = parser
        self.store = store
        self.jobs = jobs
        self.worker = worker
        self.counters = counters
        self._send_final = send_final
        self._outbox_limit = outbox_limit
        self.stopping = False

    def request(self, msg: Inbound) -> None:
        """Handle a message on a request topic (the caller acks it afterwards)."""
        self.counters.received += 1
        try:
            req = self.parser.parse(msg)
        except RequestRejected as rej:
            self._reject(rej.error, rej.request_id, rej.reply)
            return
        if self.stopping:
            self._reject(ShuttingDown("the daemon is stopping"), req.id, req.reply)
            return
        try:
            self._admit(req, msg.dup)
        except StoreError as exc:
            self.counters.store_errors += 1
            log.error("request %s refused: %s", req.id, exc.message)
            self._reject(exc, req.id, req.reply)

    def _admit(self, req: Request, redelivered: bool) -> None:
        """De-duplicate, check expiry and room, then record and queue the request."""
        if self._answered_from_record(req, redelivered):
            return
        if req.deadline is not None and time.time() >= req.deadline:
            self._reject(Expired("the request expired before it was accepted"), req.id, req.reply)
            return
        if self.jobs.full:
            self._reject(Busy(f"queue full ({self.jobs.size} waiting)"), req.id, req.reply)
            return
        if self.store.outbox_size() >= self._outbox_limit:
            self._reject(Busy("too many replies wait for the broker"), req.id, req.reply)
            return
        self._accept(req)

    def _answered_from_record(self, req: Request, redelivered: bool) -> bool:
        """Answer a repeated request from its record; True if it was one.

        A broker redelivery (DUP set: our ack was lost) of a request already answered is
        not replayed: its final reply is in the outbox or already delivered.
        """
        record = self.store.lookup(req.key)
        if record is None:
            return False
        if record.state == "done" and record.final is not None and not redelivered:
            self.counters.replayed += 1
            self._send_final(None, record.final, req.reply)
        # A pending record is already queued or running; its answer is on its way.
        return True

    def _accept(self, req: Request) -> None:
        self.store.accept(req.key, req.to_record())
        self.counters.accepted += 1
        self.jobs.put(Job(req))
        log.debug("accepted %s (deadline %s, %d queued)", req.id, req.deadline, len(self.jobs))

    def _reject(
        self, error: EdgeRuntimeError, request_id: str | None, reply: ReplyPlace | None
    ) -> None:
        self.counters.errors[error.code] += 1
        if reply is None:
            self.counters.unanswerable += 1
            log.warning("request without a reply place refused: %s", error.message)
            return
        self._send_final(None, error_payload(request_id, error), reply)

    def cancel(self, msg: Inbound) -> None:
        """Handle ``{"id": ...}`` on the cancel topic: drop it from the queue or stop it."""
        try:
            data = decode_json(msg.payload)
        except BadRequest as exc:
            log.warning("cancel ignored: %s", exc.message)
            return
        request_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(request_id, str):
            log.warning("cancel ignored: no string id")
            return
        job = self.jobs.remove(request_id)
        if job is not None:
            self.counters.errors["cancelled"] += 1
            self._send_final(job.request.key, cancelled_payload(request_id), job.request.reply)
        elif not self.worker.cancel(request_id):
            log.info("cancel for %s: not queued or running", request_id)

    def shut_queue(self) -> None:
        """Answer every waiting job ``shutting_down``."""
        for job in self.jobs.drain():
            err = ShuttingDown("the daemon is stopping; send the request again later")
            self._send_final(job.request.key, error_payload(job.request.id, err), job.request.reply)


def describe(msg: Inbound) -> str:
    """Summarise a message for logs without dumping its payload."""
    return json.dumps({"topic": msg.topic, "bytes": len(msg.payload), "retain": msg.retain})
