"""Transparent huge pages for the model's weights (Linux with glibc).

Every decode step reads all of the model's weights once, far more pages of 4 KiB than the
CPU's TLB holds; in 2 MiB pages a few hundred. ONNX Runtime allocates the weights with
``malloc``, and glibc's malloc asks the kernel for huge pages only when the tunable
``glibc.malloc.hugetlb=1`` is set, which glibc reads once, when the process starts. On
kernels whose THP mode is ``madvise`` (the usual default) a memory policy that wants huge
pages (``edge_runtime/memory.py``) therefore re-executes the process with the tunable set,
before anything is loaded: same process id, arguments and file descriptors.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
THP_SIZE = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
_MIN_GLIBC = (2, 35)  # the first release with glibc.malloc.hugetlb
WANTED_SIZE = 2 << 20
"""The only huge page size asked for: 4 KiB base pages (x86-64, most arm64 kernels).

With 16 KiB base pages (the Raspberry Pi 5's kernel) a huge page is 32 MiB, with 64 KiB
pages 512 MiB: malloc would then back each large allocation in such units and hold far more
memory than it uses, so huge pages stay off there.
"""


@dataclass(frozen=True)
class HugePages:
    """Whether this process's large allocations get transparent huge pages, and why."""

    active: bool
    reason: str


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """Return the kernel's THP mode (``always``, ``madvise``, ``never``), None if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_page_size(path: Path = THP_SIZE) -> int | None:
    """Return the size of a transparent huge page (a PMD) in bytes, None if unknown."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def glibc_version() -> tuple[int, ...] | None:
    """Return the C library's version if it is glibc, else None."""
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return None
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def tunable_set(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` already says what glibc.malloc.hugetlb should be."""
    return "glibc.malloc.hugetlb=" in environ.get("GLIBC_TUNABLES", "")


def assess(
    environ: Mapping[str, str],
    mode: str | None,
    glibc: tuple[int, ...] | None,
    size: int | None = WANTED_SIZE,
) -> HugePages:
    """Say whether huge pages are on for a process started with ``environ``.

    ``size`` is the kernel's huge page size (:func:`huge_page_size`).
    """
    if size is not None and size != WANTED_SIZE:
        return HugePages(False, f"huge pages are {size >> 20} MiB on this kernel (base pages "
                                "larger than 4 KiB); only 2 MiB ones are used")
    if mode == "always":
        return HugePages(True, "the kernel's THP mode is 'always'")
    if mode != "madvise":
        return HugePages(False, f"the kernel's THP mode is {mode or 'unknown'!r}")
    if glibc is None or glibc < _MIN_GLIBC:
        return HugePages(False, "needs glibc 2.35 or newer for glibc.malloc.hugetlb")
    if tunable_set(environ):
        value = environ["GLIBC_TUNABLES"]
        return HugePages(TUNABLE in value.split(":"), f"GLIBC_TUNABLES={value}")
    return HugePages(False, f"GLIBC_TUNABLES lacks {TUNABLE}")


def environment_with_tunable(
    environ: Mapping[str, str],
    mode: str | None,
    glibc: tuple[int, ...] | None,
    size: int | None = WANTED_SIZE,
) -> dict[str, str] | None:
    """Return the environment to re-execute with, or None when there is nothing to gain."""
    if tunable_set(environ):
        return None
    if mode != "madvise" or glibc is None or glibc < _MIN_GLIBC or size != WANTED_SIZE:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (environ.get("GLIBC_TUNABLES"), TUNABLE)))
    return env


def reexec_with_huge_pages() -> None:
    """Replace this process with itself plus the tunable, when that is wanted and possible.

    Call it before any thread starts: anything done before it is done again.
    """
    env = environment_with_tunable(os.environ, thp_mode(), glibc_version(), huge_page_size())
    argv = getattr(sys, "orig_argv", None)
    if env is None or not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:  # run on without: slower, not wrong
        return


def current() -> HugePages:
    """Describe this process."""
    return assess(os.environ, thp_mode(), glibc_version(), huge_page_size())
