"""The memory policy: what the process does with its pages, chosen once per board.

A device profile names the levers it wants (``memory = [...]`` in its TOML, overridable in
the config's ``[device] overrides``; an empty list turns them all off). ``edge-runtime
serve`` resolves the profile and calls :func:`install` before it loads anything or starts a
thread: huge pages need glibc's tunable, which glibc reads only when a process starts, so
``install`` re-executes the process with it when the policy wants them. ``load_engine`` then
calls the policy's hooks at their moments. A program that loads a bundle as a library gets
:data:`OFF` unless it installs or passes a policy.

Each lever is kept only where it lowers the memory floor (the smallest cgroup limit at which
decode keeps 90 % of its speed) or speeds decoding: docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable
from dataclasses import dataclass, fields

from devices import MEMORY_LEVERS
from edge_runtime.errors import ConfigError


@dataclass(frozen=True)
class MemoryPolicy:
    """Which memory levers this process pulls; field names are the profiles' lever names."""

    trim_heap: bool = False
    huge_pages: bool = False

    @classmethod
    def from_names(cls, names: Iterable[str]) -> MemoryPolicy:
        """Build the policy that pulls the levers ``names``; an unknown name raises."""
        wanted = set(names)
        unknown = sorted(wanted - set(MEMORY_LEVERS))
        if unknown:
            raise ConfigError(
                f"unknown memory lever(s) {', '.join(unknown)}; known: {', '.join(MEMORY_LEVERS)}"
            )
        return cls(**{name: True for name in wanted})

    @property
    def names(self) -> tuple[str, ...]:
        """The levers pulled, in the profiles' order."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name))

    def after_load(self) -> None:
        """Hand the free pages in malloc's heap back (the tokenizer's parse leaves many)."""
        if self.trim_heap:
            trim_heap()


OFF = MemoryPolicy()
_installed = OFF


def install(policy: MemoryPolicy) -> None:
    """Make ``policy`` this process's; call it before any thread starts.

    With huge pages wanted and glibc's tunable missing, the process is replaced by itself
    with the tunable set (same id, arguments and descriptors): anything done before is done
    again, so call it early.
    """
    global _installed
    if policy.huge_pages:
        from edge_runtime.hugepages import reexec_with_huge_pages

        reexec_with_huge_pages()
    _installed = policy


def installed() -> MemoryPolicy:
    """Return the policy :func:`install` set (:data:`OFF` until then)."""
    return _installed


def trim_heap() -> bool:
    """Return the free pages of malloc's heap to the system; False where malloc cannot
    (``malloc_trim`` is glibc's)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
