"""Continuous batching: several callers share one gqa graph, decoding in one forward per step.

A scheduler thread owns the KV slots. A new request is prefilled alone in the next free
slot; then every active sequence decodes together, one token each per batched forward,
each with its own cache length. Sequences join and leave between steps. Active sequences
always fill slots ``0 .. n-1``: when one leaves, the last one's cache moves into its slot,
so each step runs on one contiguous block of the KV buffers.

A prompt longer than :data:`INTERLEAVE_AFTER` tokens is read a chunk
(:data:`~edge_runtime.engine.runners.gqa.PREFILL_CHUNK`) at a time, with a decode step for
the active sequences after each chunk: a 1,000-token prompt takes seconds to read, and the
others keep streaming meanwhile instead of stopping. Shorter prompts go in at once, so that
a burst of short requests fills the batch before it decodes.

Greedy results equal running alone exactly with fp32 weights. With int4 MatMulNBits the
kernels for several rows round differently from the one-row kernel, so a near-tie between
two tokens can now and then resolve the other way.

Callers block in :meth:`BatchingEngine.generate` (or iterate :meth:`BatchingEngine.stream`)
while the scheduler hands them text pieces through a queue; their ``on_delta`` callbacks
run in their own thread, never in the scheduler's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.engine.decoding import Decoding
from edge_runtime.engine.engine import OnnxEngine
from edge_runtime.engine.prompt import PromptEngine
from edge_runtime.engine.runners import gqa
from edge_runtime.engine.runners.gqa import GqaRunner, GqaSlots
from edge_runtime.engine.types import (
    DeltaCallback,
    FinishReason,
    GenerationResult,
    Prompt,
    SamplingParams,
    Timings,
    Usage,
)
from edge_runtime.errors import (
    BundleError,
    EdgeRuntimeError,
    InternalError,
    ShuttingDown,
)

log = logging.getLogger(__name__)

_Event = tuple[str, object]  # ("delta", str) | ("done", GenerationResult) | ("error", Exception)

INTERLEAVE_AFTER = 256
"""Prompts longer than this many tokens are read a chunk per scheduler step."""


@dataclass
class BatchCounters:
    """What the scheduler has done so far: prefills, batched decode steps, time in each."""

    prefills: int = 0
    prefill_s: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0  # one per sequence per step
    decode_s: float = 0.0  # in batched forwards only: prefills and idle time excluded
    peak_batch: int = 0  # the most sequences decoded in one forward

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second over the time spent in batched decode forwards."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass(eq=False)
class _Request:
    """One sequence in flight, as the scheduler sees it."""

    prompt_ids: list[int]
    decoding: Decoding
    cancel: threading.Event | None
    called: float
    events: queue.SimpleQueue[_Event] = field(default_factory=queue.SimpleQueue)
    abandoned: threading.Event = field(default_factory=threading.Event)
    length: int = 0
    next_token: int = 0
    admitted: float = 0.0
    prefill_s: float = 0.0
    first_token: float = 0.0
    last_token: float = 0.0

    def cancelled(self) -> bool:
        return self.abandoned.is_set() or (self.cancel is not None and self.cancel.is_set())

    def result(self) -> GenerationResult:
        d = self.decoding
        queued = self.admitted - self.called
        return GenerationResult(
            text=d.text,
            finish_reason=d.finish or FinishReason.STOP,
            usage=Usage(len(self.prompt_ids), d.completion_tokens),
            timings=Timings(
                queued_s=queued,
                prefill_s=self.prefill_s,
                decode_s=max(self.last_token - self.first_token, 0.0),
                first_token_s=max(self.first_token - self.admitted, 0.0),
            ),
            token_ids=tuple(d.tokens),
        )


class BatchingEngine(PromptEngine):
    """An :class:`Engine` over a loaded gqa bundle that serves up to ``max_batch`` at once."""

    def __init__(self, engine: OnnxEngine, *, max_batch: int = 4, start: bool = True) -> None:
        runner = engine.runner
        if not isinstance(runner, GqaRunner):
            raise BundleError("continuous batching needs a bundle with a gqa graph")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine = engine
        self.max_batch = max_batch
        m = engine.manifest
        self.slots = GqaSlots(
            runner.slots.session,
            m.graph,
            m.architecture,
            slots=max_batch,
            max_length=runner.max_length,
        )
        self._incoming: queue.Queue[_Request | None] = queue.Queue()
        self._active: list[_Request] = []
        self._filling: _Request | None = None  # a long prompt being read, in slot len(active)
        self.counters = BatchCounters()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batch-scheduler", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start the scheduler (only needed when built with ``start=False``)."""
        self._thread.start()

    @property
    def peak_batch(self) -> int:
        """The most sequences decoded in one forward so far."""
        return self.counters.peak_batch

    @property
    def waiting(self) -> int:
        """How many requests wait for a slot."""
        return self._incoming.qsize()

    @property
    def info(self) -> dict[str, object]:
        return {**self.engine.info, "max_batch": self.max_batch}

    @property
    def context_length(self) -> int:
        return self.slots.max_length

    def close(self) -> None:
        """Stop the scheduler; requests still waiting fail with ShuttingDown."""
        self._closing.set()
        self._incoming.put(None)
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()
        self._thread.join()

    # Caller side -------------------------------------------------------------------------

    def encode(self, prompt: Prompt, *, chat: bool = True) -> list[int]:
        return self.engine.encode(prompt, chat=chat)

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
        ignore_eos: bool = False,
        _called: float | None = None,
    ) -> GenerationResult:
        """Generate from token ids; blocks until the sequence is done."""
        request = self._submit(prompt_ids, params, cancel, ignore_eos, _called)
        return _wait(request, on_delta)

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        chat: bool = True,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Return an iterator of text pieces; closing it early cancels the sequence."""
        called = time.perf_counter()
        request = self._submit(self.engine.encode(prompt, chat=chat), params, cancel, False, called)
        return _pieces(request)

    def _submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        cancel: threading.Event | None,
        ignore_eos: bool,
        called: float | None,
    ) -> _Request:
        if self._closing.is_set():
            raise ShuttingDown("the engine is shutting down")
        decoding = self.engine.start(prompt_ids, params, ignore_eos=ignore_eos)
        now = time.perf_counter()
        request = _Request(list(prompt_ids), decoding, cancel, now if called is None else called)
        self._incoming.put(request)
        return request

    # Scheduler side ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._admit()
                if self._filling is not None:
                    self._fill(self._filling, gqa.PREFILL_CHUNK)
                if self._active:
                    self._decode_step()
            except Exception as exc:  # keep serving: fail only the sequences in flight
                log.exception("batched step failed")
                self._fail_all(exc)
        self._drain()

    def _admit(self) -> None:
        """Prefill waiting requests into free slots; block when there is nothing to do."""
        while self._filling is None and len(self._active) < self.max_batch:
            try:
                request = self._incoming.get(block=not self._active)
            except queue.Empty:
                return
            if request is None:
                return
            if self._place(request):
                if len(request.prompt_ids) > INTERLEAVE_AFTER and self._active:
                    self._filling = request  # read a chunk per step from now on
                else:
                    self._fill(request, len(request.prompt_ids))

    def _place(self, request: _Request) -> bool:
        """Make room for ``request`` in slot ``len(active)``; False if it ended instead."""
        request.admitted = time.perf_counter()
        if request.cancelled():
            self._finish(request, FinishReason.CANCELLED)
            return False
        expected = len(request.prompt_ids) + request.decoding.max_new_tokens
        try:
            if self._active:
                self.slots.reserve(expected)
            else:
                self.slots.fit(expected)
        except Exception as exc:
            _send_error(request, exc)
            return False
        return True

    def _fill(self, request: _Request, count: int) -> None:
        """Feed up to ``count`` more prompt tokens; the request joins when all are in."""
        if request.cancelled():
            self._filling = None
            self._finish(request, FinishReason.CANCELLED)
            return
        start = request.length
        ids = np.asarray(request.prompt_ids[start : start + count], dtype=np.int64)[None, :]
        done = start + ids.shape[1] == len(request.prompt_ids)
        began = time.perf_counter()
        try:
            logits = self.slots.run(
                len(self._active), ids, np.array([start], dtype=np.int64),
                settle=done and len(request.prompt_ids) > gqa.LONG_FORWARD,
            )
        except Exception as exc:
            self._filling = None
            _send_error(request, exc)
            return
        request.length += ids.shape[1]
        self.counters.prefill_s += time.perf_counter() - began
        if not done:
            return
        self._filling = None
        request.prefill_s = time.perf_counter() - request.admitted
        self.counters.prefills += 1
        if not self._advance(request, logits[0]):
            self._active.append(request)

    def _decode_step(self) -> None:
        active = self._active
        tokens = np.array([[r.next_token] for r in active], dtype=np.int64)
        lengths = np.array([r.length for r in active], dtype=np.int64)
        started = time.perf_counter()
        logits = self.slots.run(0, tokens, lengths)
        self._count_step(len(active), time.perf_counter() - started)
        done = []
        for row, request in enumerate(active):
            request.length += 1
            if self._advance(request, logits[row]):
                done.append(request)
        self._release(done)

    def _count_step(self, rows: int, seconds: float) -> None:
        c = self.counters
        c.decode_steps += 1
        c.decode_tokens += rows
        c.decode_s += seconds
        c.peak_batch = max(c.peak_batch, rows)

    def _advance(self, request: _Request, logits: np.ndarray) -> bool:
        """Step one sequence with its logits; return True when it has finished."""
        step = request.decoding.step(logits)
        request.last_token = time.perf_counter()
        if not request.first_token:
            request.first_token = request.last_token
        if step.delta:
            request.events.put(("delta", step.delta))
        if step.finished:
            request.events.put(("done", request.result()))
            return True
        if request.cancelled():
            self._finish(request, FinishReason.CANCELLED)
            return True
        request.next_token = step.token
        return False

    def _finish(self, request: _Request, reason: FinishReason) -> None:
        if tail := request.decoding.stop(reason):
            request.events.put(("delta", tail))
        request.events.put(("done", request.result()))

    def _release(self, done: list[_Request]) -> None:
        """Drop finished sequences, moving the last active one into each freed slot.

        A prompt being read follows, so that it stays in the slot after the active ones.
        """
        for request in done:
            slot = self._active.index(request)
            last = self._active.pop()
            if last is not request:
                self.slots.move(len(self._active), slot, last.length)
                self._active[slot] = last
            if self._filling is not None:
                self.slots.move(len(self._active) + 1, len(self._active), self._filling.length)

    def _fail_all(self, exc: Exception) -> None:
        failed = [*self._active, *([self._filling] if self._filling else [])]
        for request in failed:
            _send_error(request, exc)
        self._active.clear()
        self._filling = None

    def _drain(self) -> None:
        self._fail_all(ShuttingDown("the engine is shutting down"))
        while True:
            try:
                request = self._incoming.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                _send_error(request, ShuttingDown("the engine is shutting down"))


def _send_error(request: _Request, exc: Exception) -> None:
    if not isinstance(exc, EdgeRuntimeError):
        exc = InternalError(f"model run failed: {exc}")
    request.events.put(("error", exc))


def _wait(request: _Request, on_delta: Callable[[str], None] | None) -> GenerationResult:
    """Relay a request's pieces to ``on_delta`` and return its result."""
    try:
        while True:
            kind, value = request.events.get()
            if kind == "delta":
                if on_delta is not None:
                    on_delta(value)  # type: ignore[arg-type]
            elif kind == "done":
                return value  # type: ignore[return-value]
            else:
                raise value  # type: ignore[misc]
    finally:
        request.abandoned.set()


def _pieces(request: _Request) -> Iterator[str]:
    try:
        while True:
            kind, value = request.events.get()
            if kind == "delta":
                yield value  # type: ignore[misc]
            elif kind == "done":
                return
            else:
                raise value  # type: ignore[misc]
    finally:
        request.abandoned.set()
