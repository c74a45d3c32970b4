"""Types shared by the engine and its callers (CLI, service, benchmarks)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edge_runtime.engine.request import GenerationRequest
    from edge_runtime.engine.scheduler import SchedulerCounters


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache instead of a forward."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each stage; rates derived by callers.

    ``queued_s`` runs from submission (or the caller's ``queued_since``) to the moment the
    sequence got a slot; ``first_token_s`` from then to the first token (prompt reading
    included); ``decode_s`` from the first token to the last.
    """

    queued_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings = field(default_factory=Timings)
    token_ids: tuple[int, ...] = ()
    """The generated tokens (no end-of-sequence token), for tests and benchmarks."""
    reasoning: str = ""
    """What a reasoning model wrote between its think markers (not part of ``text``)."""
    tool_calls: tuple[dict[str, Any], ...] = ()
    """Calls in OpenAI's ``tool_calls`` shape, when the request offered tools."""


DeltaCallback = Callable[[str], None]
"""Called with each new piece of text, in order; the pieces join to ``result.text``."""


class Engine(Protocol):
    """What the daemon needs from a loaded model."""

    @property
    def info(self) -> dict[str, object]:
        """Model name, quantization, context length, provider, for the ``info`` topic."""
        ...

    @property
    def capacity(self) -> int:
        """How many requests generate together at most (1: one at a time)."""
        ...

    @property
    def counters(self) -> SchedulerCounters:
        """What the scheduler has done so far, for the ``stats`` topic."""
        ...

    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
        on_reasoning: DeltaCallback | None = None,
        queued_since: float | None = None,
    ) -> GenerationResult:
        """Generate an answer; raise a typed error (``BadRequest``...) before any work.

        ``cancel`` set from another thread stops generation within one token with
        ``finish_reason`` CANCELLED. ``on_delta`` runs in the caller's thread and never
        receives half a UTF-8 character nor any part of a stop string; ``on_reasoning``
        gets a reasoning model's reasoning the same way. ``queued_since``
        (``time.monotonic``) is when the caller's own queue took the request.
        """
        ...

    def close(self) -> None:
        """Stop generating; requests in flight end with ``ShuttingDown``."""
        ...
