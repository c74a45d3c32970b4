"""The daemon's main loop: one thread owns the store and reacts to events in order.

Events come from the transport (connected, message, PUBACK), from the worker (finished
jobs) and from signal handlers (stop). The loop also enforces generation deadlines,
publishes stats, and feeds the systemd watchdog only while it is making progress and the
worker is not stuck.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from dataclasses import dataclass
from typing import Any

from edge_runtime.config import Config
from edge_runtime.engine.types import Engine
from edge_runtime.errors import Expired, ShuttingDown
from edge_runtime.service.intake import Intake, describe
from edge_runtime.service.notify import Notifier
from edge_runtime.service.protocol import (
    Inbound,
    Limits,
    ReplyPlace,
    Request,
    RequestParser,
)
from edge_runtime.service.store import OutboxItem, Store, StoreError
from edge_runtime.service.telemetry import (
    Counters,
    info_payload,
    scheduler_stats,
    stats_payload,
    status_payload,
)
from edge_runtime.service.topics import Topics
from edge_runtime.service.transport import (
    Connected,
    Disconnected,
    EventQueue,
    MessageArrived,
    Published,
    Subscribed,
    Transport,
    Will,
)
from edge_runtime.service.worker import Finished, Job, JobQueue, Worker

log = logging.getLogger(__name__)

TICK_S = 0.25
FLUSH_TIMEOUT_S = 5.0
STUCK_GRACE_S = 30.0
PRUNE_EVERY_S = 3600.0
TRANSIENT_CODES = frozenset({"busy", "shutting_down", "internal"})


@dataclass(frozen=True)
class StopRequested:
    """Put on the event queue by the SIGTERM/SIGINT handler."""

    signal: int = 0


def topics_for(config: Config) -> Topics:
    s = config.service
    return Topics(s.topic_prefix, s.device_id, s.shared_group)


class Daemon:
    """Serve requests from ``transport`` with ``engine`` until stopped; see :meth:`run`."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        transport: Transport,
        events: EventQueue,
        store: Store,
        notifier: Notifier | None = None,
    ) -> None:
        s = config.service
        self.config = config
        self.engine = engine
        self.transport = transport
        self.events = events
        self.store = store
        self.notifier = notifier or Notifier({})
        self.topics = topics_for(config)
        self.counters = Counters()
        self.jobs = JobQueue(s.queue_size)
        self.worker = Worker(engine, self.jobs, events, self._publish_chunk)
        parser = RequestParser(self.topics, Limits.from_config(s))
        self.intake = Intake(parser, store, self.jobs, self.worker, self.counters,
                             self._send_final, s.outbox_limit)
        self._inflight: dict[int, int] = {}  # publish mid -> outbox seq
        self._subscribe_mid: int | None = None
        self.ready = False
        self._stop_at: float | None = None
        self._stopped_mid: int | None = None
        self._flush_until: float | None = None
        self._finished = False
        self._started = time.monotonic()
        self._next_stats = 0.0
        self._next_prune = 0.0
        self._stuck_logged = False

    # ----- lifecycle -------------------------------------------------------------------
    def run(self) -> int:
        """Recover, connect, serve until a stop request is handled; return the exit code."""
        self._recover()
        self.worker.start()
        will = Will(self.topics.status, status_payload("offline", self.topics.device, None, 0))
        self.transport.connect(will)
        while not self._finished:
            try:
                event = self.events.get(timeout=TICK_S)
            except queue.Empty:
                event = None
            if event is not None:
                self._handle(event)
            self._tick()
        self.jobs.close()
        self.store.close()
        return 0

    def request_stop(self) -> None:
        """Ask the loop to stop (thread- and signal-safe)."""
        self.events.put(StopRequested())

    def _recover(self) -> None:
        """Pick up what the previous run left: unacknowledged replies, unanswered requests.

        The replies are handed to the transport here, once, before any new reply can reach
        the outbox: it sends them when it connects and resends them itself after a reconnect.
        Publishing the whole outbox again on the first connect would send twice every reply
        this run had already handed over (a resumed request that finished before the broker
        took the connection), so nothing is republished later.
        """
        leftover = self.store.outbox()
        for item in leftover:
            self._publish_item(item)
        if leftover:
            log.warning("publishing %d reply(ies) left in the outbox by the previous run",
                        len(leftover))
        pending = self.store.pending()
        for record in pending:
            self.jobs.put(Job(Request.from_record(record)))
        if pending:
            log.warning("resuming %d accepted request(s) from before a restart", len(pending))

    @property
    def model_name(self) -> str | None:
        name = self.engine.info.get("name") or self.engine.info.get("model")
        return None if name is None else str(name)

    # ----- events ----------------------------------------------------------------------
    def _handle(self, event: object) -> None:
        if isinstance(event, MessageArrived):
            self._on_message(event.message)
        elif isinstance(event, Finished):
            self._on_finished(event)
        elif isinstance(event, Published):
            self._on_published(event.mid)
        elif isinstance(event, Connected):
            self._on_connected(event)
        elif isinstance(event, Subscribed):
            self._on_subscribed(event)
        elif isinstance(event, Disconnected):
            log.warning("broker connection lost (%s); reconnecting", event.reason)
        elif isinstance(event, StopRequested):
            self._begin_stop()

    def _on_connected(self, event: Connected) -> None:
        if not event.ok:
            log.error("cannot connect to the broker: %s", event.reason)
            return
        log.info("connected to the broker (session present: %s)", event.session_present)
        filters = [self.topics.request, self.topics.cancel]
        if self.topics.pool_request:
            filters.append(self.topics.pool_request)
        self._subscribe_mid = self.transport.subscribe(filters)

    def _on_subscribed(self, event: Subscribed) -> None:
        if event.mid != self._subscribe_mid:
            return
        if not event.ok:
            log.error("the broker refused the subscription (check the ACL)")
            return
        if self._stop_at is not None:
            return
        # Again after every reconnect: the broker may have published our Last Will.
        self._publish_info()
        self._publish_status("online")
        if not self.ready:
            self.ready = True
            self.notifier.ready(f"serving {self.model_name} on {self.topics.request}")
            log.info("ready: %s", self.config.summary())

    def _on_message(self, msg: Inbound) -> None:
        try:
            if msg.topic == self.topics.cancel:
                self.intake.cancel(msg)
            elif self.topics.is_request_topic(msg.topic):
                self.intake.request(msg)
            else:
                log.warning("message on unexpected topic ignored: %s", describe(msg))
        except Exception:  # one bad message must not stop the daemon
            log.exception("failed to handle %s", describe(msg))
        self.transport.ack(msg.mid, msg.qos)

    def _on_finished(self, event: Finished) -> None:
        self.counters.generation(event.completion_tokens, event.decode_s)
        error = event.payload.get("error")
        if error:
            self.counters.errors[error["code"]] += 1
        self._send_final(event.request.key, event.payload, event.request.reply)

    def _on_published(self, mid: int) -> None:
        if mid == self._stopped_mid:
            self._stopped_mid = None
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            try:
                self.store.delivered(seq)
            except StoreError as exc:
                log.error("%s", exc.message)

    # ----- replies ---------------------------------------------------------------------
    def _publish_chunk(self, req: Request, payload: bytes) -> None:
        """Publish a stream chunk (called from the worker thread; best effort).

        At QoS 0: a chunk is a preview of the final, and brokers keep QoS 1 messages for an
        offline session only up to a count (Mosquitto's ``max_queued_messages``), so chunks
        at QoS 1 could crowd the final out of that queue.
        """
        try:
            self.transport.publish(
                req.reply.topic, payload, qos=0, correlation_data=req.reply.correlation_data
            )
        except Exception:  # chunks are best effort
            log.exception("chunk for %s not published", req.id)

    def _send_final(self, key: str | None, payload: dict[str, Any], reply: ReplyPlace) -> None:
        """Record the final reply in the outbox (and the request as done), then publish it."""
        self.counters.answered += 1
        code = (payload.get("error") or {}).get("code")
        try:
            item = self.store.finish(
                key, payload, reply.topic, reply.correlation_data, forget=code in TRANSIENT_CODES
            )
        except StoreError as exc:
            self.counters.store_errors += 1
            log.error("reply for %s sent without the durable outbox: %s",
                      payload.get("id"), exc.message)
            item = OutboxItem(-1, reply.topic, _encode(payload), reply.correlation_data)
        self._publish_item(item)

    def _publish_item(self, item: OutboxItem) -> None:
        mid = self.transport.publish(item.topic, item.payload, correlation_data=item.correlation)
        if item.seq >= 0:
            self._inflight[mid] = item.seq

    def _publish_status(self, state: str) -> int:
        payload = status_payload(state, self.topics.device, self.model_name, len(self.jobs))
        return self.transport.publish(self.topics.status, payload, retain=True)

    def _publish_info(self) -> None:
        s = self.config.service
        limits = {"queue_size": s.queue_size, "max_prompt_bytes": s.max_prompt_bytes,
                  "max_payload_bytes": s.max_payload_bytes, "max_max_tokens": s.max_max_tokens,
                  "generation_deadline_s": s.generation_deadline_s}
        payload = info_payload(self.topics.device, dict(self.engine.info), limits)
        self.transport.publish(self.topics.info, payload, retain=True)

    # ----- periodic work ---------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        healthy = self._enforce_deadline(now)
        if healthy:
            self.notifier.progress()
        if self.ready and now >= self._next_stats and self._stop_at is None:
            self._next_stats = now + self.config.service.stats_interval_s
            self._publish_stats()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            self._prune()
        if self._stop_at is not None:
            self._continue_stop(now)

    def _enforce_deadline(self, now: float) -> bool:
        """Stop overlong generations; return False once a worker looks stuck."""
        healthy = True
        limit = self.config.service.generation_deadline_s
        for job in self.worker.running:
            if job.started_at is None:
                continue
            if now - job.started_at > limit and not job.cancel.is_set():
                log.warning("generation %s ran past %.0f s; stopping it", job.request.id, limit)
                self.worker.stop(job, Expired(f"generation ran past its {limit:g} s deadline"))
            if now - job.started_at > limit + STUCK_GRACE_S:
                healthy = False
                if not self._stuck_logged:
                    self._stuck_logged = True
                    log.error("worker stuck on %s; letting the watchdog restart us",
                              job.request.id)
        if healthy:
            self._stuck_logged = False
        return healthy

    def _publish_stats(self) -> None:
        s = self.config.service
        payload = stats_payload(self.topics.device, self.counters, len(self.jobs), s.queue_size,
                                self.store.outbox_size(), self._started,
                                scheduler_stats(self.engine.counters))
        self.transport.publish(self.topics.stats, payload, qos=0)
        self._publish_status("online")

    def _prune(self) -> None:
        try:
            self.store.prune(self.config.service.record_ttl_s)
        except Exception:  # pruning is housekeeping
            log.exception("pruning the state store failed")

    # ----- shutdown --------------------------------------------------------------------
    def _begin_stop(self) -> None:
        if self._stop_at is not None:
            return
        log.info("stopping: finishing the request in flight")
        self.notifier.stopping()
        self.intake.stopping = True
        self.intake.shut_queue()
        self._stop_at = time.monotonic() + self.config.service.shutdown_grace_s

    def _continue_stop(self, now: float) -> None:
        """Advance the shutdown: wait for the job in flight, flush the outbox, say stopped."""
        assert self._stop_at is not None
        if self.worker.running:
            if now >= self._stop_at:
                self.worker.stop_all(ShuttingDown("the daemon stopped during generation"))
            if now < self._stop_at + STUCK_GRACE_S:
                return
        if self._flush_until is None:
            self._flush_until = now + FLUSH_TIMEOUT_S
        if self._inflight and now < self._flush_until:
            return
        if self.ready:
            self.ready = False
            self._stopped_mid = self._publish_status("stopped")
            self._flush_until = now + 2.0
        if self._stopped_mid is not None and now < self._flush_until:
            return
        self.transport.disconnect()
        self._finished = True


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
