"""The bounded request queue and the worker thread that runs the engine.

The worker publishes stream chunks itself (best effort) and reports every finished job as
a :class:`Finished` event on the daemon's queue; the daemon makes the final reply durable.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.engine.types import Engine, FinishReason
from edge_runtime.errors import EdgeRuntimeError, Expired, ShuttingDown, as_error
from edge_runtime.service.protocol import Request
from edge_runtime.service.replies import chunk_payload, error_payload, final_payload
from edge_runtime.service.transport import EventQueue

log = logging.getLogger(__name__)

ChunkSink = Callable[[Request, bytes], None]
"""Publish one chunk payload for a request (best effort)."""


@dataclass
class Job:
    request: Request
    queued_at: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None
    stop_error: EdgeRuntimeError | None = None
    """Why ``cancel`` was set by the daemon (deadline, shutdown); None for a user cancel."""


@dataclass(frozen=True)
class Finished:
    request: Request
    payload: dict[str, Any]
    completion_tokens: int = 0
    decode_s: float = 0.0


class JobQueue:
    """A bounded FIFO of jobs that can also remove a job by request id."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)

    @property
    def full(self) -> bool:
        return len(self) >= self.size

    def put(self, job: Job) -> None:
        """Add a job (the caller checked :attr:`full` where it refuses work)."""
        with self._cond:
            if not self._closed:
                self._jobs.append(job)
                self._cond.notify()

    def get(self) -> Job | None:
        """Wait for the next job; None once the queue is closed and empty."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            return self._jobs.popleft() if self._jobs else None

    def remove(self, request_id: str) -> Job | None:
        with self._cond:
            for job in self._jobs:
                if job.request.id == request_id:
                    self._jobs.remove(job)
                    return job
            return None

    def drain(self) -> list[Job]:
        """Take every waiting job out."""
        with self._cond:
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Worker:
    """Run queued jobs on the engine, one thread per request the engine can generate at once.

    The thread count follows ``engine.capacity``, decided when the model was loaded: a job
    leaves the queue only when the engine has room for it.
    """

    def __init__(
        self, engine: Engine, jobs: JobQueue, events: EventQueue, chunks: ChunkSink
    ) -> None:
        self.engine = engine
        self.jobs = jobs
        self._events = events
        self._chunks = chunks
        self._lock = threading.Lock()
        self._running: dict[int, Job] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"edge-worker-{i}", daemon=True)
            for i in range(engine.capacity)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def running(self) -> list[Job]:
        """The jobs being generated now."""
        with self._lock:
            return list(self._running.values())

    def cancel(self, request_id: str, error: EdgeRuntimeError | None = None) -> bool:
        """Stop the running job ``request_id``; return whether one was running."""
        with self._lock:
            for job in self._running.values():
                if job.request.id == request_id:
                    job.stop_error = error
                    job.cancel.set()
                    return True
            return False

    def stop(self, job: Job, error: EdgeRuntimeError) -> None:
        """Stop ``job`` if it still runs, reporting ``error`` for it."""
        with self._lock:
            if job in self._running.values():
                job.stop_error = error
                job.cancel.set()

    def stop_all(self, error: EdgeRuntimeError) -> None:
        """Stop whatever runs now, reporting ``error`` for each."""
        for job in self.running:
            self.stop(job, error)

    def _run(self, slot: int) -> None:
        while (job := self.jobs.get()) is not None:
            with self._lock:
                self._running[slot] = job
                job.started_at = time.monotonic()
            try:
                finished = self._execute(job)
            except Exception as exc:  # the worker must keep going
                log.exception("generation failed for %s", job.request.id)
                error = as_error(exc, "generation failed")
                finished = Finished(job.request, error_payload(job.request.id, error))
            with self._lock:
                del self._running[slot]
            self._events.put(finished)

    def _execute(self, job: Job) -> Finished:
        req = job.request
        if req.deadline is not None and time.time() >= req.deadline:
            return Finished(req, error_payload(req.id, Expired("deadline passed before start")))
        seq = 0

        def send(delta: str, reasoning: str = "") -> None:
            nonlocal seq
            self._chunks(req, chunk_payload(req.id, seq, delta, reasoning))
            seq += 1

        try:
            streams = req.body.stream
            result = self.engine.generate(
                req.body, cancel=job.cancel, on_delta=send if streams else None,
                on_reasoning=(lambda text: send("", text)) if streams else None,
                queued_since=job.queued_at,
            )
        except EdgeRuntimeError as exc:
            queued_s = time.monotonic() - job.queued_at
            return Finished(req, error_payload(req.id, exc, queued_s=queued_s))
        if result.finish_reason is FinishReason.CANCELLED and job.stop_error is not None:
            payload = error_payload(req.id, job.stop_error, result.text, result.timings.queued_s)
        else:
            payload = final_payload(req.id, result)
        return Finished(
            req, payload, result.usage.completion_tokens, result.timings.decode_s
        )


__all__ = ["Finished", "Job", "JobQueue", "ShuttingDown", "Worker"]
