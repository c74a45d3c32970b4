"""The memory policy: named per device profile, installed once, applied by load_engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import devices
from edge_runtime import memory
from edge_runtime.engine import EngineOptions, load_engine, mapped_pages
from edge_runtime.errors import ConfigError
from edge_runtime.memory import OFF, MemoryPolicy


def test_a_profiles_levers_become_the_policy() -> None:
    levers = devices.load_profile("raspberry-pi-4").memory
    assert MemoryPolicy.from_names(levers).names == levers


def test_an_unknown_lever_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown memory lever.*swap.*known: release_code"):
        MemoryPolicy.from_names(["swap"])


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the heap trims, and leave the process's policy as it was."""
    calls: list[int] = []

    def trim_heap() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(mapped_pages, "trim_heap", trim_heap)
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
