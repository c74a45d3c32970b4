"""Types shared by the engine and its callers (CLI, service, benchmarks)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, TypedDict


class ChatMessage(TypedDict):
    role: str
    content: str


Prompt = str | Sequence[ChatMessage]
"""A plain string (completion, or one user turn when ``chat`` is on) or a chat list."""


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. ``None`` means the bundle's default."""

    max_tokens: int | None = None
    temperature: float | None = None  # 0 means greedy
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds spent; rates derived by callers."""

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


DeltaCallback = Callable[[str], None]
"""Called with each new piece of text, in order; the pieces join to ``result.text``."""


class Engine(Protocol):
    """What the CLI and the daemon need from a loaded model."""

    @property
    def info(self) -> dict[str, object]:
        """Model name, quantization, context length, provider, for the ``info`` topic."""
        ...

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        chat: bool = True,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> GenerationResult:
        """Generate an answer. Raises ContextLengthExceeded before any work if it cannot fit.

        ``cancel`` set from another thread stops generation within one token with
        ``finish_reason`` CANCELLED. ``on_delta`` never receives half a UTF-8 character
        nor any part of a stop string.
        """
        ...

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        chat: bool = True,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as ``generate`` would pass them to ``on_delta``."""
        ...
