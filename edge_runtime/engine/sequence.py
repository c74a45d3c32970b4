"""One sequence in flight: its decoding state, its clocks, and the events its caller reads.

The scheduler thread owns a :class:`Sequence` from admission to its end and tells the caller
what happens through :attr:`Sequence.events`: text pieces (:class:`Delta`), then exactly one
:class:`Done` or :class:`Failed`. The caller's thread relays them (:func:`relay`), so the
caller's callbacks never run in the scheduler's thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.engine.channels import Piece
from edge_runtime.engine.decoding import Decoding
from edge_runtime.engine.types import FinishReason, GenerationResult, Timings, Usage
from edge_runtime.errors import EdgeRuntimeError


@dataclass(frozen=True)
class Delta:
    """A piece of the answer and of the reasoning, in order; they join to the result's."""

    text: str
    reasoning: str = ""


@dataclass(frozen=True)
class Done:
    """The sequence ended (stop, length or cancelled)."""

    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    """The sequence ended with an error; the others in flight go on."""

    error: EdgeRuntimeError


SequenceEvent = Delta | Done | Failed


@dataclass
class Clock:
    """When a sequence reached each stage (``time.monotonic`` seconds)."""

    submitted: float
    admitted: float = 0.0
    prefilled: float = 0.0
    first_token: float = 0.0
    last_token: float = 0.0

    def timings(self) -> Timings:
        admitted = self.admitted or self.submitted
        return Timings(
            queued_s=max(admitted - self.submitted, 0.0),
            prefill_s=max(self.prefilled - admitted, 0.0) if self.prefilled else 0.0,
            decode_s=max(self.last_token - self.first_token, 0.0),
            first_token_s=max(self.first_token - admitted, 0.0) if self.first_token else 0.0,
        )


@dataclass(eq=False)
class Sequence:
    """A request as the scheduler sees it: tokens, decoding state, slot fill, clocks."""

    prompt_ids: list[int]
    decoding: Decoding
    clock: Clock
    cancel: threading.Event | None = None
    events: queue.SimpleQueue[SequenceEvent] = field(default_factory=queue.SimpleQueue)
    abandoned: threading.Event = field(default_factory=threading.Event)
    streaming: bool = True
    """Whether the caller reads the pieces; without, only the end is sent."""
    length: int = 0
    """Tokens in the sequence's KV slot."""
    cached: int = 0
    """Prompt tokens whose KV came from the prefix cache."""
    exact: int = 0
    """Leading tokens of the slot whose KV is what reading them as a prompt computes."""
    next_token: int = 0
    """The token to feed at the next decode step."""
    ended: bool = False
    tool_calls: Callable[[str], tuple[str, list[dict[str, Any]]]] | None = None
    """Parse the held tool-call text into extra content and calls (tools offered)."""

    @property
    def prompt_left(self) -> int:
        """Prompt tokens not yet in the slot."""
        return len(self.prompt_ids) - self.length

    def cancelled(self) -> bool:
        return self.abandoned.is_set() or (self.cancel is not None and self.cancel.is_set())

    def emit(self, piece: Piece) -> None:
        if self.streaming and (piece.text or piece.reasoning):
            self.events.put(Delta(piece.text, piece.reasoning))

    def finish(self, reason: FinishReason | None = None) -> None:
        """End the sequence (``reason`` from outside, e.g. CANCELLED) and send its result."""
        if reason is not None:
            self.emit(self.decoding.stop(reason))
        self.ended = True
        self.events.put(Done(self.result()))

    def fail(self, error: EdgeRuntimeError) -> None:
        self.decoding.stop(FinishReason.ERROR)
        self.ended = True
        self.events.put(Failed(error))

    def result(self) -> GenerationResult:
        d = self.decoding
        text, finish = d.text, d.finish or FinishReason.STOP
        calls: list[dict[str, Any]] = []
        if self.tool_calls is not None and d.held:
            extra, calls = self.tool_calls(d.held)
            text = (text + extra).strip() if calls else text + d.held
            if calls and finish is FinishReason.STOP:
                finish = FinishReason.TOOL_CALLS
        return GenerationResult(
            text=text,
            finish_reason=finish,
            usage=Usage(len(self.prompt_ids), d.completion_tokens, self.cached),
            timings=self.clock.timings(),
            token_ids=tuple(d.tokens),
            reasoning=d.reasoning,
            tool_calls=tuple(calls),
        )


def now() -> float:
    return time.monotonic()


def relay(
    sequence: Sequence,
    on_delta: Callable[[str], None] | None,
    on_reasoning: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Pass the sequence's answer and reasoning pieces on in this thread; return its result."""
    try:
        while True:
            event = sequence.events.get()
            if isinstance(event, Delta):
                if on_delta is not None and event.text:
                    on_delta(event.text)
                if on_reasoning is not None and event.reasoning:
                    on_reasoning(event.reasoning)
            elif isinstance(event, Done):
                return event.result
            else:
                raise event.error
    finally:
        sequence.abandoned.set()


def pieces(sequence: Sequence) -> Iterator[str]:
    """Yield the sequence's pieces; closing the iterator early cancels it."""
    try:
        while True:
            event = sequence.events.get()
            if isinstance(event, Delta):
                if event.text:
                    yield event.text
            elif isinstance(event, Done):
                return
            else:
                raise event.error
    finally:
        sequence.abandoned.set()
