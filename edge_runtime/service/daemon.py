"""The daemon's main loop: one thread owns the store and reacts to events in order.

Events come from the transport (connected, message, PUBACK), from the worker (finished
jobs, resumed requests about to start) and from signal handlers (stop). The loop also
enforces generation deadlines, retries what the state folder refused, publishes stats, and
feeds the systemd watchdog only while it is making progress and the worker is not stuck.
Nothing an event or a periodic task raises ends the loop.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from edge_runtime.config import Config
from edge_runtime.engine.types import Engine
from edge_runtime.errors import Expired, ShuttingDown
from edge_runtime.service.delivery import Delivery
from edge_runtime.service.intake import Intake, describe, printable
from edge_runtime.service.notify import Notifier
from edge_runtime.service.protocol import Inbound, Request
from edge_runtime.service.recovery import ResumedStart, ResumeGuard, Started, resume
from edge_runtime.service.store import Store, StoreError
from edge_runtime.service.telemetry import (
    Counters,
    Identity,
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
from edge_runtime.service.worker import Finished, JobQueue, Worker

log = logging.getLogger(__name__)

TICK_S = 0.25
MIN_WAIT_S = 0.005
FLUSH_TIMEOUT_S = 5.0
STUCK_GRACE_S = 30.0
PRUNE_EVERY_S = 3600.0
STORE_RETRY_S = 1.0
TRANSIENT_CODES = frozenset({"busy", "shutting_down", "internal"})


@dataclass(frozen=True)
class StopRequested:
    """Put on the event queue by the SIGTERM/SIGINT handler."""

    signal: int = 0


def topics_for(config: Config) -> Topics:
    s = config.service
    return Topics(s.topic_prefix, s.device_id, s.shared_group, s.reply_topic_pattern)


def _transient(payload: dict[str, Any]) -> bool:
    """Whether a final is not kept to answer repeats (see docs/protocol.md)."""
    code = (payload.get("error") or {}).get("code")
    return code in TRANSIENT_CODES or payload.get("finish_reason") == "cancelled"


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
        self.identity = Identity()
        self.jobs = JobQueue(s.queue_size)
        self.guard = ResumeGuard(engine, events)
        self.worker = Worker(self.guard, self.jobs, events, self._publish_chunk)
        self.delivery = Delivery(transport, store, self.counters)
        self.intake = Intake(self.topics, s, store, self.jobs, self.worker, self.counters,
                             self.delivery)
        self._subscribe_mid: int | None = None
        self.ready = False
        self._stop_at: float | None = None
        self._stopped_mid: int | None = None
        self._flush_until: float | None = None
        self._finished = False
        self._started = time.monotonic()
        self._next: dict[str, float] = {}
        self._stuck_logged = False

    # ----- lifecycle -------------------------------------------------------------------
    def run(self) -> int:
        """Recover, connect, serve until a stop request is handled; return the exit code."""
        self._recover()
        self.worker.start()
        self.transport.connect(Will(self.topics.status, self._status("offline")))
        while not self._finished:
            try:
                event = self.events.get(timeout=self._wait_s())
            except queue.Empty:
                event = None
            if event is not None:
                self._safely(f"handling {type(event).__name__}", partial(self._handle, event))
            self._tick()
        self._safely("recording deliveries", self.delivery.flush_marks)
        if self.delivery.held:
            log.warning("%d answer(s) could not be recorded; their requests run again at the "
                        "next start", self.delivery.held)
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
            self.delivery.publish_item(item)
        if leftover:
            log.warning("publishing %d reply(ies) left in the outbox by the previous run",
                        len(leftover))
        queued = resume(self.store, self.jobs, self.guard, self.delivery.final, self.counters)
        if queued:
            log.warning("resuming %d accepted request(s) from before a restart", queued)

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
            self._on_published(event)
        elif isinstance(event, ResumedStart):
            self._on_resumed_start(event)
        elif isinstance(event, Connected):
            self._on_connected(event)
        elif isinstance(event, Subscribed):
            self._on_subscribed(event)
        elif isinstance(event, Disconnected):
            self._on_disconnected(event)
        elif isinstance(event, StopRequested):
            self._begin_stop()
        elif isinstance(event, Started):
            pass  # only wakes the loop, whose next wait then ends at the new deadline

    def _on_connected(self, event: Connected) -> None:
        if not event.ok:
            log.error("cannot connect to the broker: %s", event.reason)
            return
        log.info("connected to the broker (session present: %s)", event.session_present)
        self._subscribe_mid = self.transport.subscribe(self.topics.filters())

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

    def _on_disconnected(self, event: Disconnected) -> None:
        self.counters.session_takeovers += event.takeover
        self.counters.short_connections += event.short_lived > 0
        client_id = self.config.client_id
        wait = "" if event.retry_in_s is None else f"; reconnecting in {event.retry_in_s:.0f} s"
        if event.takeover:
            log.error("session taken over: another client connected with client id %s "
                      "(two devices with one device id?)%s", client_id, wait)
        elif event.retry_in_s is not None:
            log.error("the broker closed %d connections in a row soon after accepting them: "
                      "is another client using client id %s (a copied device id)?%s",
                      event.short_lived, client_id, wait)
        else:
            log.warning("broker connection lost (%s); reconnecting", event.reason)

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
        req = event.request
        self.delivery.final(req.key, event.payload, req.reply, _transient(event.payload))

    def _on_resumed_start(self, event: ResumedStart) -> None:
        try:
            self.store.mark_attempt(event.key)
        except StoreError as exc:
            self.delivery.store_failed(exc)
        finally:
            event.marked.set()

    def _on_published(self, event: Published) -> None:
        if event.mid == self._stopped_mid:
            self._stopped_mid = None
        self.delivery.published(event)

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
            log.exception("chunk for %s not published", printable(req.id))

    def _status(self, state: str) -> bytes:
        return status_payload(state, self.topics.device, self.model_name, len(self.jobs),
                              self.identity, self._store_state(), self.counters)

    def _store_state(self) -> dict[str, Any]:
        aside = self.store.moved_aside
        fault = self.delivery.fault
        return {"ok": fault is None, "fault": fault,
                "moved_aside": aside.name if aside is not None else None}

    def _publish_status(self, state: str) -> int:
        return self.transport.publish(self.topics.status, self._status(state), retain=True)

    def _publish_info(self) -> None:
        s = self.config.service
        limits = {"queue_size": s.queue_size, "max_prompt_bytes": s.max_prompt_bytes,
                  "max_payload_bytes": s.max_payload_bytes, "max_max_tokens": s.max_max_tokens,
                  "generation_deadline_s": s.generation_deadline_s,
                  "max_state_bytes": s.max_state_bytes}
        payload = info_payload(self.topics.device, dict(self.engine.info), limits)
        self.transport.publish(self.topics.info, payload, retain=True)

    # ----- periodic work ---------------------------------------------------------------
    def _wait_s(self) -> float:
        """Return how long to wait for an event: a tick, or less if a deadline falls sooner."""
        limit = self.config.service.generation_deadline_s
        now = time.monotonic()
        wait = TICK_S
        for job in self.worker.running:
            if job.started_at is not None and not job.cancel.is_set():
                wait = min(wait, job.started_at + limit - now)
        return max(wait, MIN_WAIT_S)

    def _due(self, name: str, now: float, every: float) -> bool:
        if now < self._next.get(name, 0.0):
            return False
        self._next[name] = now + every
        return True

    def _safely(self, what: str, run: Callable[[], Any]) -> None:
        try:
            run()
        except Exception:  # the loop must go on
            log.exception("%s failed; going on", what)

    def _tick(self) -> None:
        now = time.monotonic()
        healthy = self._enforce_deadline(now)
        if healthy:
            self.notifier.progress()
        # At once, not when the queue runs dry: while a request streams, every chunk's
        # publish is an event, and a crash before the mark would send that final again.
        if self.delivery.marks_pending:
            self._safely("recording deliveries", self.delivery.flush_marks)
        if self.delivery.held and self._due("retry", now, STORE_RETRY_S):
            self._safely("recording held answers", self.delivery.retry_held)
        s = self.config.service
        if self.ready and self._stop_at is None and self._due("stats", now, s.stats_interval_s):
            self._safely("publishing stats", self._publish_stats)
        if self._due("prune", now, PRUNE_EVERY_S):
            self._safely("pruning the state store", self._prune)
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
                log.warning("generation %s ran past %g s; stopping it",
                            printable(job.request.id), limit)
                self.worker.stop(job, Expired(f"generation ran past its {limit:g} s deadline"))
            if now - job.started_at > limit + STUCK_GRACE_S:
                healthy = False
                if not self._stuck_logged:
                    self._stuck_logged = True
                    log.error("worker stuck on %s; letting the watchdog restart us",
                              printable(job.request.id))
        if healthy:
            self._stuck_logged = False
        return healthy

    def _publish_stats(self) -> None:
        s = self.config.service
        try:
            used: int | None = self.store.used_bytes()
        except StoreError:
            used = None
        store = {**self._store_state(), "bytes": used, "limit": s.max_state_bytes,
                 "held": self.delivery.held}
        payload = stats_payload(self.topics.device, self.counters, len(self.jobs), s.queue_size,
                                self.store.outbox_size(), self._started,
                                scheduler_stats(self.engine.counters), store)
        self.transport.publish(self.topics.stats, payload, qos=0)
        self._publish_status("online")

    def _prune(self) -> None:
        s = self.config.service
        self.store.prune(s.record_ttl_s)
        self.store.shrink(s.max_state_bytes)

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
        if self.delivery.in_flight and now < self._flush_until:
            return
        if self.ready:
            self.ready = False
            self._stopped_mid = self._publish_status("stopped")
            self._flush_until = now + 2.0
        if self._stopped_mid is not None and now < self._flush_until:
            return
        self.transport.disconnect()
        self._finished = True
