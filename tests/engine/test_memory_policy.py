"""The memory policy: named per device profile, installed once, applied by load_engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import devices
from edge_runtime import memory
from edge_runtime.engine import EngineOptions, load_engine
from edge_runtime.errors import ConfigError
from edge_runtime.memory import OFF, MemoryPolicy


def test_a_profiles_levers_become_the_policy() -> None:
    levers = devices.load_profile("raspberry-pi-4").memory
    assert MemoryPolicy.from_names(levers).names == levers


def test_an_unknown_lever_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown memory lever.*swap.*known: trim_heap"):
        MemoryPolicy.from_names(["swap"])


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the heap trims, and leave the process's policy as it was."""
    calls: list[int] = []

    def trim_heap() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(memory, "trim_heap", trim_heap)
    monkeypatch.setattr(memory, "_installed", OFF)
    return calls


def test_loading_follows_the_installed_policy_unless_told_otherwise(
    tiny_bundle: Callable[..., Path], trims: list[int]
) -> None:
    bundle = tiny_bundle("llama", "int4")
    options = EngineOptions(threads=1)
    load_engine(bundle, options)
    assert trims == []  # nothing installed: no lever
    memory.install(MemoryPolicy(trim_heap=True))
    load_engine(bundle, options)
    assert trims == [1]
    load_engine(bundle, options, OFF)  # a policy passed wins
    assert trims == [1]


def _rss_anon() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("RssAnon:"))) * 1024


def test_freed_heap_pages_are_handed_back() -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = 64 * 1024  # under malloc's mmap threshold: these come from the heap
    blocks = [libc.malloc(block) for _ in range(1024)]
    for address in blocks:
        ctypes.memset(address, 1, block)
    freed, kept = blocks[0::2], blocks[1::2]
    for address in freed:  # holes between live blocks: free() alone cannot shrink the heap
        libc.free(address)
    before = _rss_anon()
    assert memory.trim_heap()
    assert before - _rss_anon() > 16 * 2**20  # of the 32 MB written and freed
    for address in kept:
        libc.free(address)
