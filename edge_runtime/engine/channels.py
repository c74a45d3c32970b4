"""Split a streamed answer into what the model reasons, what it answers, and its tool calls.

Reasoning models (DeepSeek-R1 distills, Qwen3) write their reasoning between ``<think>`` and
``</think>``; a kiosk must not show it as the answer. Tool calls start with a marker
(``<tool_call>``) and are not streamed: the final message carries them parsed. Markers can
arrive split across tokens, so text that could be the start of one is held back until it
can no longer be, as the stop matcher does for stop strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Markers:
    """The markers one bundle's chat format uses; None where it has no such thing."""

    think: tuple[str, str] | None = None
    tool_call: str | None = None


class Channel(str, Enum):
    ANSWER = "answer"
    REASONING = "reasoning"
    HELD = "held"


@dataclass(frozen=True)
class Piece:
    """Newly safe text: for the answer and for the reasoning (either may be empty)."""

    text: str = ""
    reasoning: str = ""


class Channels:
    """Route streamed text by the markers it holds; the markers themselves are dropped.

    ``reasoning`` starts in the reasoning channel: the prompt opened it (R1's template ends
    its generation prompt with ``<think>``). Everything from a tool-call marker on is held
    (:attr:`held`, marker included), never streamed.
    """

    def __init__(self, markers: Markers, *, reasoning: bool = False) -> None:
        self.markers = markers
        self.channel = Channel.REASONING if reasoning and markers.think else Channel.ANSWER
        self.held = ""
        self._buffer = ""
        self._trim = self.channel is Channel.REASONING  # drop the newline after a marker

    def push(self, text: str) -> Piece:
        """Add ``text``; return the part that can no longer belong to a marker."""
        self._buffer += text
        answer: list[str] = []
        reasoning: list[str] = []
        while self._buffer:
            found = self._next_marker()
            if found is None:
                keep = self._partial_marker()
                ready, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[
                    len(self._buffer) - keep :]
                self._route(ready, answer, reasoning)
                break
            index, marker, target = found
            self._route(self._buffer[:index], answer, reasoning)
            self._buffer = self._buffer[index + len(marker) :]
            self._switch(target, marker)
        return Piece("".join(answer), "".join(reasoning))

    def flush(self) -> Piece:
        """Release what is held back at the end of generation (no marker can complete now)."""
        answer: list[str] = []
        reasoning: list[str] = []
        self._route(self._buffer, answer, reasoning)
        self._buffer = ""
        return Piece("".join(answer), "".join(reasoning))

    def _targets(self) -> list[tuple[str, Channel]]:
        think, call = self.markers.think, self.markers.tool_call
        if self.channel is Channel.REASONING:
            return [(think[1], Channel.ANSWER)] if think else []
        if self.channel is Channel.HELD:
            return []
        targets = [(think[0], Channel.REASONING)] if think else []
        return targets + ([(call, Channel.HELD)] if call else [])

    def _next_marker(self) -> tuple[int, str, Channel] | None:
        best: tuple[int, str, Channel] | None = None
        for marker, target in self._targets():
            index = self._buffer.find(marker)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, marker, target)
        return best

    def _partial_marker(self) -> int:
        """Return the length of the longest end of the buffer that begins a marker."""
        longest = 0
        for marker, _ in self._targets():
            for size in range(min(len(marker) - 1, len(self._buffer)), longest, -1):
                if marker.startswith(self._buffer[len(self._buffer) - size :]):
                    longest = size
                    break
        return longest

    def _switch(self, target: Channel, marker: str) -> None:
        self.channel = target
        if target is Channel.HELD:
            self.held += marker
        self._trim = target is not Channel.HELD

    def _route(self, text: str, answer: list[str], reasoning: list[str]) -> None:
        if self.channel is Channel.HELD:
            self.held += text
            return
        if self._trim:
            text = text.lstrip("\n")
            self._trim = not text
        (reasoning if self.channel is Channel.REASONING else answer).append(text)
