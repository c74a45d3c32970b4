"""Give back the mapped pages that this process no longer reads: model files, library code.

These are the page-level tools of the memory policy (``edge_runtime/memory.py``), which
decides when, and whether, each is used.

ONNX Runtime maps each external initializer from the bundle's data file and reads it while
it repacks the int4 weights into buffers of its own; the kernels read those copies
afterwards, yet the mapped pages of the scales stay resident. ``MADV_DONTNEED`` on a private
file mapping drops its pages from this process; a page that is read again comes back from
the page cache with the file's contents. ONNX Runtime maps the files writable
(copy-on-write), so only mappings with no private copy of any page (smaps' ``Anonymous: 0``)
are released: there, nothing differs from the file and nothing is lost.

A table that a gather node reads a row at a time (the embedding) stays mapped and is read as
tokens arrive. On such a fault Linux also maps the neighbouring pages that are in the page
cache ("fault-around") and reads ahead around it, so each row of a few hundred bytes made
tens of KB resident. :func:`read_on_demand` turns read-ahead off for the table's mappings
(``MADV_RANDOM``) and drops its pages from the page cache once (``POSIX_FADV_DONTNEED``),
so that later faults find no cached neighbours and bring in the one page they need.

:func:`release_read_only_pages` drops the pages of every private mapping that cannot be
written (the code and constants of the libraries, which loading leaves resident); those
still in use come back from the page cache on first touch. :func:`trim_heap` hands back the
free pages inside malloc's heap. Page sizes are read from the kernel (4 KiB, 16 KiB or
64 KiB base pages), never assumed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.hugepages import huge_page_size, page_size

log = logging.getLogger(__name__)

MAPS = Path("/proc/self/smaps")
_MADV_RANDOM, _MADV_DONTNEED = 1, 4
_DEFAULT_FOLIO = 2 << 20
_SYNC_WRITE_AND_WAIT = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER


@dataclass(frozen=True)
class Mapping:
    """One file mapping of ``/proc/self/smaps``: resident bytes, and those copied on write."""

    start: int
    end: int
    perms: str
    path: str
    offset: int = 0  # of the mapping's first byte in the file
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
    if hasattr(libc, "sync_file_range"):  # Linux only
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                         ctypes.c_uint]
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
                current = {"start": start, "end": end, "perms": fields[1], "path": fields[5],
                           "offset": int(fields[2], 16)}
        elif current is not None and fields[0] in ("Rss:", "Anonymous:"):
            current[fields[0][:-1].lower()] = int(fields[1]) * 1024
    if current is not None:
        found.append(Mapping(**current))  # type: ignore[arg-type]
    return found


def under(mapping: Mapping, folders: Iterable[Path]) -> bool:
    return any(Path(mapping.path).is_relative_to(folder) for folder in folders)


def release_file_pages(folders: Sequence[Path], maps: Sequence[Mapping] | None = None) -> int:
    """Drop the resident pages of unwritten private mappings of files under ``folders``.

    ``maps`` is read from ``/proc`` when not given. Returns how many bytes were resident in
    them before.
    """
    roots = [folder.resolve() for folder in folders]
    return _drop(m for m in (mappings() if maps is None else maps)
                 if m.same_as_file and under(m, roots))


def release_read_only_pages() -> int:
    """Drop the resident pages of every unwritten private mapping that cannot be written.

    That is the code and read-only data of Python, its extension modules and the shared
    libraries. Returns how many bytes were resident in them before. Call it while no other
    thread unmaps files (the loader does, before and after creating the session): a range
    unmapped and reused between the read of smaps and the advice would be zeroed.
    """
    return _drop(m for m in mappings() if m.read_only and m.same_as_file)


def _drop(chosen: Iterable[Mapping]) -> int:
    return sum(
        m.rss for m in chosen
        if m.rss and _madvise(m.start, m.end - m.start, _MADV_DONTNEED, m.path)
    )


def read_on_demand(
    path: Path, offset: int, length: int, maps: Sequence[Mapping] | None = None
) -> int:
    """Make bytes ``offset .. offset + length`` of ``path`` resident only a page per read.

    Applies to this process's mappings of that range (``maps``, read from ``/proc`` when not
    given), and drops the range's pages from the page cache. Returns how many mapped bytes
    now fault in one page at a time.
    """
    file = str(path.resolve())
    page = page_size()
    advised = 0
    for m in mappings() if maps is None else maps:
        start = max(offset, m.offset)
        end = min(offset + length, m.offset + m.end - m.start)
        if m.path != file or start >= end:
            continue
        first = m.start + (start - m.offset) // page * page
        last = m.start + end - m.offset
        if _madvise(first, last - first, _MADV_RANDOM, m.path):
            advised += last - first
    if advised:
        _drop_cached(file, offset, length)
    return advised


def _madvise(start: int, size: int, advice: int, path: str) -> bool:
    if _libc().madvise(start, size, advice) == 0:
        return True
    log.debug("madvise(%s, %d) failed: errno %d", path, advice, ctypes.get_errno())
    return False


def _drop_cached(path: str, offset: int, length: int) -> None:
    """Ask the kernel to evict a file range from the page cache (pages mapped anywhere stay).

    The range is widened to whole folios: the page cache keeps a file in folios of up to a
    huge page (2 MiB with 4 KiB pages, 32 MiB with 16 KiB pages), and keeps a folio that the
    range covers only in part. Dirty pages cannot be dropped, so the range is written out
    first: a bundle converted a moment ago (the quickstart serves right after converting) is
    still dirty in the page cache.
    """
    folio = huge_page_size() or _DEFAULT_FOLIO
    start = offset // folio * folio
    end = -(-(offset + length) // folio) * folio
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        log.debug("cannot open %s to drop its cached pages: %s", path, exc)
        return
    try:
        _write_out(fd, start, end - start)
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
    except OSError as exc:
        log.debug("posix_fadvise(%s) failed: %s", path, exc)
    finally:
        os.close(fd)


def _write_out(fd: int, offset: int, length: int) -> None:
    """Write a file range's dirty pages to storage and wait (nothing to do when clean)."""
    sync = getattr(_libc(), "sync_file_range", None)
    if sync is None:
        return
    if sync(fd, offset, length, _SYNC_WRITE_AND_WAIT) != 0:
        log.debug("sync_file_range failed: errno %d", ctypes.get_errno())


def trim_heap() -> bool:
    """Return the free pages of malloc's heap to the system; False where malloc cannot
    (``malloc_trim`` is glibc's)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
