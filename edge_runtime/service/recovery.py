"""Resume what the previous run left unanswered, without letting one request loop restarts.

An accepted request that was not answered when the daemon died is run again at the next
start. If that request is what kills the daemon (a crash in a kernel, the OOM killer, a hang
the watchdog ends), running it again kills the daemon again, at every start. So a resumed
request is marked in the store just before it runs; one still unanswered at the next start
with that mark was in flight at two deaths in a row, and it is answered ``internal``
instead of being run a third time. Requests that were only waiting in the queue are not
marked, so they are not blamed for another's crash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_runtime.engine.request import GenerationRequest
from edge_runtime.engine.scheduler import SchedulerCounters
from edge_runtime.engine.types import DeltaCallback, Engine, GenerationResult
from edge_runtime.errors import InternalError
from edge_runtime.service.intake import printable
from edge_runtime.service.protocol import ReplyPlace, Request
from edge_runtime.service.replies import error_payload
from edge_runtime.service.store import Pending, Store
from edge_runtime.service.telemetry import Counters
from edge_runtime.service.transport import EventQueue
from edge_runtime.service.worker import Job, JobQueue

log = logging.getLogger(__name__)

MARK_TIMEOUT_S = 5.0
GIVEN_UP = ("the daemon stopped twice while this request was being generated; it is not run "
            "again (see the device log)")
DAMAGED = "the stored copy of this request was damaged; send it again with a new id"

Answer = Callable[[str, dict[str, Any], ReplyPlace, bool], None]


@dataclass(frozen=True)
class Started:
    """A generation is about to run: the main loop wakes to watch its deadline."""


@dataclass(frozen=True)
class ResumedStart:
    """A resumed request is about to run: mark it in the store, then set ``marked``."""

    key: str
    marked: threading.Event


class ResumeGuard:
    """The engine, as the worker sees it: every start wakes the main loop, and the start of
    a resumed request waits until the main loop has marked it in the store."""

    def __init__(self, engine: Engine, events: EventQueue) -> None:
        self._engine = engine
        self._events = events
        self._lock = threading.Lock()
        self._resumed: dict[threading.Event, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @property
    def info(self) -> dict[str, object]:
        return self._engine.info

    @property
    def capacity(self) -> int:
        return self._engine.capacity

    @property
    def counters(self) -> SchedulerCounters:
        return self._engine.counters

    def close(self) -> None:
        self._engine.close()

    def watch(self, job: Job) -> None:
        """Have ``job``'s start marked before it runs."""
        with self._lock:
            self._resumed[job.cancel] = job.request.key

    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
        on_reasoning: DeltaCallback | None = None,
        queued_since: float | None = None,
    ) -> GenerationResult:
        """Mark a resumed request (waiting for the main loop to write it), then generate."""
        with self._lock:
            key = self._resumed.pop(cancel, None) if cancel is not None else None
        if key is None:
            self._events.put(Started())
        else:
            marked = threading.Event()
            self._events.put(ResumedStart(key, marked))
            if not marked.wait(MARK_TIMEOUT_S):
                log.warning("running a resumed request before its start was recorded")
        return self._engine.generate(request, cancel=cancel, on_delta=on_delta,
                                     on_reasoning=on_reasoning, queued_since=queued_since)


def resume(
    store: Store, jobs: JobQueue, guard: ResumeGuard, answer: Answer, counters: Counters
) -> int:
    """Queue the previous run's unanswered requests, answering those that must not run.

    Return how many were queued.
    """
    queued = 0
    for pending in store.pending():
        request_id = pending.key.split("\n", 1)[0]
        reply = ReplyPlace(pending.topic, pending.correlation)
        if pending.attempts >= 1:
            counters.given_up += 1
            log.error("request %s was in flight at two restarts in a row; answering it "
                      "internal instead of running it again", printable(request_id))
            answer(pending.key, error_payload(request_id, InternalError(GIVEN_UP)), reply, False)
            continue
        request = _rebuild(pending, counters)
        if request is None:
            if pending.topic:
                err = InternalError(DAMAGED)
                answer(pending.key, error_payload(request_id, err), reply, False)
            else:
                store.quarantine(pending.key)
            continue
        job = Job(request)
        guard.watch(job)
        jobs.put(job)
        queued += 1
    return queued


def _rebuild(pending: Pending, counters: Counters) -> Request | None:
    """Rebuild a recorded request; None (counted, logged) when its record is damaged."""
    try:
        return Request.from_record(pending.record)
    except ValueError as exc:
        counters.quarantined += 1
        log.warning("skipping the damaged record of request %s: %s",
                    printable(pending.key.split("\n", 1)[0]), printable(exc))
        return None
