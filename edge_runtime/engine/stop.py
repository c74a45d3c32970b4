"""Find stop strings in streamed text, across token boundaries, without ever emitting them."""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    """Hold back text that could be the start of a stop string; cut at the first match.

    Feed text with :meth:`push`; it returns what is safe to show now. Once a stop string
    is seen, :attr:`stopped` is set, the text before it is released and everything from the
    stop string on is dropped. :meth:`flush` releases what is held when generation ends
    for another reason.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Add ``text``; return the part that can no longer belong to a stop string."""
        if self.stopped or not text:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        found = self._first_match(buffer)
        if found is not None:
            index, stop = found
            self.stopped, self.matched, self._held = True, stop, ""
            return buffer[:index]
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Release held text (generation ended without a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _first_match(self, buffer: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self.stops:
            index = buffer.find(stop)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        return best

    def _partial_suffix(self, buffer: str) -> int:
        """Return the length of the longest end of ``buffer`` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if stop.startswith(buffer[len(buffer) - size :]):
                    longest = size
                    break
        return longest
