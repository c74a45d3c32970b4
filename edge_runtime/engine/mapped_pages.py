"""Give back pages this process holds but no longer needs: library code, malloc's free pages.

These are the page-level tools of the memory policy (``edge_runtime/memory.py``), which
decides whether each is used.

:func:`release_read_only_pages` drops the pages of every private mapping that cannot be
written (the code and constants of Python, numpy, ONNX Runtime and the tokenizer, which
loading leaves resident); those still in use come back from the page cache on first touch.
:func:`trim_heap` hands back the free pages inside malloc's heap, which glibc otherwise keeps
for later allocations.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAPS = Path("/proc/self/smaps")
_MADV_DONTNEED = 4


@dataclass(frozen=True)
class Mapping:
    """One file mapping of ``/proc/self/smaps``: resident bytes, and those copied on write."""

    start: int
    end: int
    perms: str
    path: str
    rss: int = 0
    anonymous: int = 0

    @property
    def same_as_file(self) -> bool:
        """Private, and no page written: dropping its pages loses nothing."""
        return self.perms[3] == "p" and self.anonymous == 0

    @property
    def read_only(self) -> bool:
        """No thread can write to it, so it stays the same as the file meanwhile."""
        return self.perms[1] == "-"


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def mappings() -> list[Mapping]:
    """Return this process's file mappings with their resident and copied-on-write bytes."""
    found: list[Mapping] = []
    current: dict[str, object] | None = None
    try:
        lines = MAPS.read_text().splitlines()
    except OSError:  # not Linux
        return []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and "-" in fields[0] and not fields[0].endswith(":"):
            if current is not None:
                found.append(Mapping(**current))  # type: ignore[arg-type]
            current = None
            if len(fields) == 6 and fields[5].startswith("/"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = {"start": start, "end": end, "perms": fields[1], "path": fields[5]}
        elif current is not None and fields[0] in ("Rss:", "Anonymous:"):
            current[fields[0][:-1].lower()] = int(fields[1]) * 1024
    if current is not None:
        found.append(Mapping(**current))  # type: ignore[arg-type]
    return found


def release_read_only_pages() -> int:
    """Drop the resident pages of every unwritten private mapping that cannot be written.

    That is the code and read-only data of Python, its extension modules and the shared
    libraries. Returns how many bytes were resident in them before. Call it while no other
    thread unmaps files (the loader does, before and after creating the session): a range
    unmapped and reused between the read of smaps and the advice would be zeroed.
    """
    return _drop(m for m in mappings() if m.read_only and m.same_as_file)


def _drop(chosen: Iterable[Mapping]) -> int:
    return sum(m.rss for m in chosen if m.rss and _madvise(m.start, m.end - m.start, m.path))


def _madvise(start: int, size: int, path: str) -> bool:
    if _libc().madvise(start, size, _MADV_DONTNEED) == 0:
        return True
    log.debug("madvise(%s) failed: errno %d", path, ctypes.get_errno())
    return False


def trim_heap() -> bool:
    """Return the free pages of malloc's heap to the system; False where malloc cannot
    (``malloc_trim`` is glibc's)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
