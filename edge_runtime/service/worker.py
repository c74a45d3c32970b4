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
from edge_runtime.errors import EdgeRuntimeError, Expired, InternalError, ShuttingDown
from edge_runtime.service.protocol import Request
from edge_runtime.service.replies import error_payload, final_payload
from edge_runtime.service.transport import EventQueue

log = logging.getLogger(__name__)

ChunkSink = Callable[[Request, int, str], None]


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

    def put(self, job: Job, *, force: bool = False) -> bool:
        """Add a job; return False at once when the queue is full (unless ``force``) or closed."""
        with self._cond:
            if self._closed or (len(self._jobs) >= self.size and not force):
                return False
            self._jobs.append(job)
            self._cond.notify()
            return True

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
    """Run queued jobs on the engine in ``concurrency`` threads of their own.

    With more than one thread the engine must accept concurrent ``generate`` calls (the
    batching engine decodes them together); otherwise one thread runs one job at a time.
    """

    def __init__(
        self,
        engine: Engine,
        jobs: JobQueue,
        events: EventQueue,
        chunks: ChunkSink,
        concurrency: int = 1,
    ) -> None:
        self.engine = engine
        self.jobs = jobs
        self._events = events
        self._chunks = chunks
        self._lock = threading.Lock()
        self._running: dict[int, Job] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"edge-worker-{i}", daemon=True)
            for i in range(max(1, concurrency))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

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
                finished = Finished(job.request, error_payload(job.request.id, _as_error(exc)))
            with self._lock:
                del self._running[slot]
            self._events.put(finished)

    def _execute(self, job: Job) -> Finished:
        req = job.request
        queued_s = time.monotonic() - job.queued_at
        if req.deadline is not None and time.time() >= req.deadline:
            return Finished(req, error_payload(req.id, Expired("deadline passed before start")))
        seq = 0

        def on_delta(delta: str) -> None:
            nonlocal seq
            if req.stream and delta:
                self._chunks(req, seq, delta)
                seq += 1

        try:
            result = self.engine.generate(
                req.prompt, req.params, chat=req.chat, cancel=job.cancel, on_delta=on_delta
            )
        except EdgeRuntimeError as exc:
            return Finished(req, error_payload(req.id, exc, queued_s=queued_s))
        if result.finish_reason is FinishReason.CANCELLED and job.stop_error is not None:
            payload = error_payload(req.id, job.stop_error, result.text, queued_s)
        else:
            payload = final_payload(req.id, result, queued_s)
        return Finished(
            req, payload, result.usage.completion_tokens, result.timings.decode_s
        )


def _as_error(exc: BaseException) -> EdgeRuntimeError:
    if isinstance(exc, EdgeRuntimeError):
        return exc
    return InternalError(f"generation failed: {type(exc).__name__}")


__all__ = ["Finished", "Job", "JobQueue", "ShuttingDown", "Worker"]
