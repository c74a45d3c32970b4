"""The one decode loop: every sequence, one at a time or many together, goes through it.

A scheduler thread owns the runner's KV slots. A new sequence is placed in the next free
slot and its prompt read; then every active sequence decodes together, one token each per
forward, each with its own cache length. Sequences join and leave between steps. Active
sequences always fill slots ``0 .. n-1``: when one leaves, the last one's cache moves into
its slot, so each step runs on one contiguous block of the KV buffers. With one slot this
is plain one-at-a-time generation.

A prompt longer than :data:`INTERLEAVE_AFTER` tokens, arriving while others decode, is read
a chunk per step with a decode step for the others after each chunk, so that they keep
streaming. Shorter prompts go in at once, so that a burst of short requests fills the batch
before it decodes.

Faults stay with their sequence: a sequence whose prompt cannot be read, whose sampling
fails, or whose row of a batched forward fails (each row is retried alone when the batched
forward fails) ends with :class:`~edge_runtime.engine.sequence.Failed`; the others go on.
Cancellation is checked between prompt chunks and after every token.

With a prefix cache (:mod:`edge_runtime.engine.slot_cache`), a sequence starts from the
cached KV of its prompt's longest known start and reads only the rest; what its slot holds
is kept when its prompt is read and when it ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import numpy as np

from edge_runtime.engine.channels import Piece
from edge_runtime.engine.prefix_cache import CacheStats
from edge_runtime.engine.runners import KvSlots
from edge_runtime.engine.sequence import Sequence, now
from edge_runtime.engine.slot_cache import SlotCache
from edge_runtime.engine.types import FinishReason
from edge_runtime.errors import EdgeRuntimeError, ShuttingDown, as_error

log = logging.getLogger(__name__)

INTERLEAVE_AFTER = 256
"""Prompts longer than this many tokens are read a chunk per step while others decode."""
SETTLE_AFTER = 256
"""After reading a prompt longer than this, the session hands back what it grew by."""


@dataclass
class SchedulerCounters:
    """What the scheduler has done so far: prompts read, decode steps, time in each."""

    prefills: int = 0
    prefill_s: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0  # one per sequence per step
    decode_s: float = 0.0  # in decode forwards only: prompts and idle time excluded
    peak_batch: int = 0  # the most sequences decoded in one forward
    failed: int = 0  # sequences ended by a fault of their own
    prefix_cache: CacheStats | None = None  # the prefix cache's, when there is one

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second over the time spent in decode forwards."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


class Scheduler:
    """Drive the sequences submitted to it over ``slots``, in a thread of its own."""

    def __init__(
        self, slots: KvSlots, *, start: bool = True, cache: SlotCache | None = None
    ) -> None:
        self.slots = slots
        self.cache = cache
        self.counters = SchedulerCounters(prefix_cache=cache.cache.stats if cache else None)
        self._incoming: queue.Queue[Sequence | None] = queue.Queue()
        self._active: list[Sequence] = []
        self._filling: Sequence | None = None  # a prompt being read, in slot len(active)
        self._closing = threading.Event()
        self._resting = threading.Condition()
        self._at_rest = False  # the loop waits for a sequence, with none in a slot
        self._thread = threading.Thread(target=self._loop, name="edge-scheduler", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start the loop (only needed when built with ``start=False``)."""
        self._thread.start()

    @property
    def capacity(self) -> int:
        """How many sequences decode together at most."""
        return self.slots.slots

    @property
    def waiting(self) -> int:
        """How many sequences wait for a slot."""
        return self._incoming.qsize()

    def submit(self, sequence: Sequence) -> None:
        if self._closing.is_set():
            raise ShuttingDown("the engine is shutting down")
        self._incoming.put(sequence)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no sequence is running or waiting, and what ended ones leave in the
        prefix cache is kept (an answer is read again only while nothing else waits)."""
        with self._resting:
            return self._resting.wait_for(
                lambda: self._at_rest and self._incoming.empty(), timeout)

    def close(self) -> None:
        """Stop the loop; sequences in flight or waiting fail with ShuttingDown."""
        self._closing.set()
        self._incoming.put(None)
        if self._thread.ident is None:
            self._thread.start()
        self._thread.join()

    # The loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._admit()
                if self._filling is not None:
                    self._fill(self._filling)
                if self._active:
                    self._decode_step()
            except Exception as exc:  # a fault of the loop itself: end what is in flight
                log.exception("scheduler step failed")
                self._fail_all(as_error(exc, "generation failed"))
        self._drain()

    def _admit(self) -> None:
        """Place waiting sequences in free slots; block while there is nothing to do."""
        while self._filling is None and len(self._active) < self.capacity:
            try:
                sequence = self._next_incoming()
            except queue.Empty:
                return
            if sequence is None:
                return
            if not self._place(sequence):
                continue
            interleave = self._active and sequence.prompt_left > INTERLEAVE_AFTER
            self._filling = sequence
            while not interleave and self._filling is sequence:
                self._fill(sequence)

    def _next_incoming(self) -> Sequence | None:
        """The next submitted sequence: waits for one while no slot is busy."""
        if self._active:
            return self._incoming.get(block=False)
        with self._resting:
            self._at_rest = True
            self._resting.notify_all()
        try:
            return self._incoming.get()
        finally:
            with self._resting:
                self._at_rest = False

    def _place(self, sequence: Sequence) -> bool:
        """Make room in slot ``len(active)``; False if the sequence ended instead."""
        sequence.clock.admitted = now()
        if sequence.cancelled():
            sequence.finish(FinishReason.CANCELLED)
            return False
        expected = len(sequence.prompt_ids) + sequence.decoding.max_new_tokens
        try:
            if self._active:
                self.slots.reserve(expected)
            else:
                self.slots.fit(expected)
        except Exception as exc:
            self._fault(sequence, as_error(exc, "cannot make room for the sequence"))
            return False
        if self.cache is not None:
            self.cache.start(sequence, len(self._active))
        return True

    def _fill(self, sequence: Sequence) -> None:
        """Read the next chunk of the prompt; the sequence joins the batch after the last."""
        if sequence.cancelled():
            self._filling = None
            sequence.finish(FinishReason.CANCELLED)
            return
        start, count = sequence.length, min(self.slots.chunk, sequence.prompt_left)
        last = count == sequence.prompt_left
        ids = np.asarray(sequence.prompt_ids[start : start + count], dtype=np.int64)[None, :]
        began = now()
        try:
            logits = self.slots.run(
                len(self._active), ids, np.array([start], dtype=np.int64),
                settle=last and len(sequence.prompt_ids) - sequence.cached > SETTLE_AFTER,
            )
        except Exception as exc:
            self._filling = None
            self._fault(sequence, as_error(exc, "model run failed while reading the prompt"))
            return
        if self.cache is not None:
            self.cache.note_read(sequence, start, count)
        sequence.length += count
        self.counters.prefill_s += now() - began
        if not last:
            return
        self._filling = None
        sequence.clock.prefilled = now()
        self.counters.prefills += 1
        if not self._advance(sequence, logits[0]):
            self._keep(sequence, len(self._active), ended=False)
            self._active.append(sequence)
        else:
            self._keep(sequence, len(self._active), ended=True)

    def _decode_step(self) -> None:
        active = self._active
        tokens = np.array([[s.next_token] for s in active], dtype=np.int64)
        lengths = np.array([s.length for s in active], dtype=np.int64)
        began = now()
        try:
            logits = self.slots.run(0, tokens, lengths)
        except Exception as exc:
            log.warning("a batched forward failed (%s); running its rows alone", exc)
            rows = self._rows_alone(tokens, lengths)
        else:
            rows = list(logits)
        self._count_step(len(active), now() - began)
        ended = []
        for sequence, row in zip(active, rows, strict=True):
            if row is None:
                ended.append(sequence)
                continue
            sequence.length += 1
            if self._advance(sequence, row):
                ended.append(sequence)
        self._release(ended)

    def _rows_alone(self, tokens: np.ndarray, lengths: np.ndarray) -> list[np.ndarray | None]:
        """Run each row of a failed batched forward by itself; fail the rows that fail again."""
        rows: list[np.ndarray | None] = []
        for slot, sequence in enumerate(self._active):
            try:
                row = self.slots.run(slot, tokens[slot : slot + 1], lengths[slot : slot + 1])
                rows.append(row[0].copy())
            except Exception as exc:
                self._fault(sequence, as_error(exc, "model run failed"))
                rows.append(None)
        return rows

    def _advance(self, sequence: Sequence, logits: np.ndarray) -> bool:
        """Step one sequence with its logits; return True when it has ended."""
        try:
            step = sequence.decoding.step(logits)
        except Exception as exc:
            self._fault(sequence, as_error(exc, "choosing the next token failed"))
            return True
        clock = sequence.clock
        clock.last_token = now()
        clock.first_token = clock.first_token or clock.last_token
        sequence.emit(Piece(step.delta, step.reasoning))
        if step.finished:
            sequence.finish()
            return True
        if sequence.cancelled():
            sequence.finish(FinishReason.CANCELLED)
            return True
        sequence.next_token = step.token
        return False

    def _fault(self, sequence: Sequence, error: EdgeRuntimeError) -> None:
        if error.code == "internal":
            log.error("sequence failed: %s", error.message)
        self.counters.failed += 1
        sequence.fail(error)

    def _count_step(self, rows: int, seconds: float) -> None:
        c = self.counters
        c.decode_steps += 1
        c.decode_tokens += rows
        c.decode_s += seconds
        c.peak_batch = max(c.peak_batch, rows)

    def _release(self, ended: list[Sequence]) -> None:
        """Drop ended sequences, moving the last active one into each freed slot.

        A prompt being read follows, so that it stays in the slot after the active ones.
        """
        for sequence in ended:
            slot = self._active.index(sequence)
            self._keep(sequence, slot, ended=True)
            last = self._active.pop()
            if last is not sequence:
                self.slots.move(len(self._active), slot, last.length)
                self._active[slot] = last
            if self._filling is not None:
                self.slots.move(len(self._active) + 1, len(self._active), self._filling.length)

    def _keep(self, sequence: Sequence, slot: int, *, ended: bool) -> None:
        if self.cache is not None:
            self.cache.keep(sequence, slot, ended=ended, idle=self._idle)

    def _idle(self) -> bool:
        """Whether nothing but ended sequences holds or waits for a slot."""
        return (self._filling is None and self._incoming.empty()
                and all(s.ended for s in self._active))

    def _fail_all(self, error: EdgeRuntimeError) -> None:
        for sequence in [*self._active, *([self._filling] if self._filling else [])]:
            if not sequence.ended:
                sequence.fail(error)
        self._active.clear()
        self._filling = None

    def _drain(self) -> None:
        self._fail_all(ShuttingDown("the engine is shutting down"))
        while True:
            try:
                sequence = self._incoming.get_nowait()
            except queue.Empty:
                return
            if sequence is not None:
                sequence.fail(ShuttingDown("the engine is shutting down"))
