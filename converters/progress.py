"""Progress on long steps: one plain line to stderr as each step starts and ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Progress = Callable[[str], None]
"""Called with a short message as each step starts and ends."""


def silent(_message: str) -> None:
    """Discard progress messages."""


def stderr_progress(stream: TextIO | None = None) -> Progress:
    """Return a progress callback that writes to ``stream`` (stderr by default)."""
    out = stream or sys.stderr

    def report(message: str) -> None:
        out.write(f"edge-runtime convert: {message}\n")
        out.flush()

    return report


@contextmanager
def step(progress: Progress, name: str) -> Iterator[None]:
    """Report the start and the end (with elapsed seconds) of a named step."""
    progress(f"{name} ...")
    start = time.monotonic()
    yield
    progress(f"{name} done ({time.monotonic() - start:.1f} s)")
