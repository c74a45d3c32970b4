"""Handle one inbound message: validate, de-duplicate, record durably, queue, then ack.

The order matters: a request is acknowledged to the broker only after it is recorded (or
refused), so a crash before the ack makes the broker deliver it again, and the record then
answers the repeat instead of generating twice. Refusals are not recorded: they cost the
state folder nothing, and one lost in a crash is refused again when the broker redelivers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import unicodedata
from typing import Any, Protocol

from edge_runtime.config import ServiceConfig
from edge_runtime.errors import (
    BadRequest,
    Busy,
    EdgeRuntimeError,
    Expired,
    InternalError,
    ShuttingDown,
)
from edge_runtime.service.protocol import (
    ID_PATTERN,
    Inbound,
    Limits,
    ReplyPlace,
    Request,
    RequestParser,
    RequestRejected,
    decode_json,
)
from edge_runtime.service.replies import cancelled_payload, error_payload
from edge_runtime.service.store import Store, StoreError
from edge_runtime.service.telemetry import Counters
from edge_runtime.service.topics import Topics
from edge_runtime.service.worker import Job, JobQueue, Worker

log = logging.getLogger(__name__)

MAX_CANCEL_BYTES = 1024
LOG_TEXT_CHARS = 200
_ID = re.compile(ID_PATTERN)
_DIGEST_SKIPS = {"id", "reply_to", "deadline", "stream"}
"""Fields a retry may change without being another request."""


class Replies(Protocol):
    """Where the intake sends finals: durably (accepted requests) or directly (refusals)."""

    def final(self, key: str, payload: dict[str, Any], reply: ReplyPlace, forget: bool) -> None:
        """Record the final of an accepted request, then publish it."""
        ...

    def direct(self, payload: dict[str, Any], reply: ReplyPlace) -> None:
        """Publish a reply that is not recorded (a refusal, a repeat's stored answer)."""
        ...

    def store_failed(self, exc: StoreError) -> None:
        """Report that the store refused a write (logged once per fault, shown in status)."""
        ...

    def store_works(self) -> None:
        """Report that the store took a write again."""
        ...


def printable(value: object, limit: int = LOG_TEXT_CHARS) -> str:
    """Render client-supplied text for a log line: one line, escaped, at most ``limit`` chars."""
    text = str(value)
    cut = len(text) - limit
    text = text[:limit]
    text = "".join(
        ch if ch.isprintable() and unicodedata.category(ch) not in ("Zl", "Zp")
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )
    return text + (f"...(+{cut} chars)" if cut > 0 else "")


def request_digest(req: Request) -> str:
    """Return a digest of what the request asks (not how or where it is answered)."""
    body = req.body.model_dump(mode="json", exclude_defaults=True, exclude=_DIGEST_SKIPS)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Intake:
    """Turn request and cancel messages into queued jobs and immediate replies."""

    def __init__(
        self,
        topics: Topics,
        service: ServiceConfig,
        store: Store,
        jobs: JobQueue,
        worker: Worker,
        counters: Counters,
        replies: Replies,
    ) -> None:
        self.topics = topics
        self.limits = Limits.from_config(service)
        self.service = service
        self.store = store
        self.jobs = jobs
        self.worker = worker
        self.counters = counters
        self._replies = replies
        self.stopping = False

    def request(self, msg: Inbound) -> None:
        """Handle a message on a request topic (the caller acks it afterwards)."""
        self.counters.received += 1
        try:
            req = RequestParser(self.topics.for_topic(msg.topic), self.limits).parse(msg)
        except RequestRejected as rej:
            self._refuse(rej.error, rej.request_id, rej.reply)
            return
        if self.stopping:
            self._refuse(ShuttingDown("the daemon is stopping"), req.id, req.reply)
            return
        try:
            self._admit(req, msg.dup)
        except StoreError as exc:
            self._replies.store_failed(exc)
            log.debug("request %s refused: %s", printable(req.id), exc.message)
            self._refuse(InternalError(f"the request could not be recorded: {exc.message}"),
                         req.id, req.reply)

    def _admit(self, req: Request, redelivered: bool) -> None:
        """De-duplicate, check expiry and room, then record and queue the request."""
        digest = request_digest(req)
        if self._answered_from_record(req, digest, redelivered):
            return
        if req.deadline is not None and time.time() >= req.deadline:
            self._refuse(Expired("the request expired before it was accepted"), req.id, req.reply)
            return
        problem = self._no_room()
        if problem is not None:
            self._refuse(Busy(problem), req.id, req.reply)
            return
        self.store.accept(req.key, digest, req.to_record(), req.reply.topic,
                          req.reply.correlation_data)
        self._replies.store_works()
        self.counters.accepted += 1
        self.jobs.put(Job(req))
        log.debug("accepted %s (deadline %s, %d queued)", printable(req.id), req.deadline,
                  len(self.jobs))

    def _no_room(self) -> str | None:
        """Say why there is no room for another request, or return None."""
        if self.jobs.full:
            return f"queue full ({self.jobs.size} waiting)"
        if self.store.outbox_size() >= self.service.outbox_limit:
            return "too many replies wait for the broker"
        limit = self.service.max_state_bytes
        if self.store.used_bytes() > limit and not self.store.shrink(limit):
            return f"the state folder holds its limit (service.max_state_bytes = {limit})"
        return None

    def _answered_from_record(self, req: Request, digest: str, redelivered: bool) -> bool:
        """Answer a repeated request from its record; True if it was one.

        The same id with other content is refused rather than answered with another
        request's text. A broker redelivery (DUP set: our ack was lost) of a request already
        answered is not replayed: its final reply is in the outbox or already delivered.
        """
        record = self.store.lookup(req.key)
        if record is None:
            return False
        if record.digest and record.digest != digest:
            self._refuse(BadRequest(
                f"id {req.id} was already used for another request (kept "
                f"{self.service.record_ttl_s:g} s); send this one with a new id"),
                req.id, req.reply)
        elif record.state == "done" and record.final is not None and not redelivered:
            self.counters.replayed += 1
            self._replies.direct(record.final, req.reply)
        # A pending record is already queued or running; its answer is on its way.
        return True

    def _refuse(
        self, error: EdgeRuntimeError, request_id: str | None, reply: ReplyPlace | None
    ) -> None:
        self.counters.errors[error.code] += 1
        if reply is None:
            self.counters.unanswerable += 1
            log.warning("request without a reply place refused: %s", printable(error.message))
            return
        self._replies.direct(error_payload(request_id, error), reply)

    def cancel(self, msg: Inbound) -> None:
        """Handle ``{"id": ...}`` on the cancel topic: drop it from the queue or stop it."""
        if len(msg.payload) > MAX_CANCEL_BYTES:
            log.warning("cancel ignored: %d bytes (at most %d)", len(msg.payload),
                        MAX_CANCEL_BYTES)
            return
        try:
            data = decode_json(msg.payload)
        except BadRequest as exc:
            log.warning("cancel ignored: %s", printable(exc.message))
            return
        request_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(request_id, str) or not _ID.fullmatch(request_id):
            log.warning("cancel ignored: no valid id (1-128 characters on one line, "
                        "without / + #)")
            return
        job = self.jobs.remove(request_id)
        if job is not None:
            self.counters.errors["cancelled"] += 1
            self._replies.final(job.request.key, cancelled_payload(request_id),
                                job.request.reply, True)
        elif not self.worker.cancel(request_id):
            log.info("cancel for %s: not queued or running", printable(request_id))

    def shut_queue(self) -> None:
        """Answer every waiting job ``shutting_down``."""
        for job in self.jobs.drain():
            err = ShuttingDown("the daemon is stopping; send the request again later")
            self._replies.final(job.request.key, error_payload(job.request.id, err),
                                job.request.reply, True)


def describe(msg: Inbound) -> str:
    """Summarise a message for logs without dumping its payload."""
    return json.dumps({"topic": printable(msg.topic), "bytes": len(msg.payload),
                       "retain": msg.retain})
