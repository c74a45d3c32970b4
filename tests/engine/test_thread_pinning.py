"""Worker threads pinned one per core, on the cores this process may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_runtime.cli import build_parser
from edge_runtime.cli.run import engine_options
from edge_runtime.engine import EngineOptions
from edge_runtime.engine.session import _session_options, worker_affinities

AFFINITIES = "session.intra_op_thread_affinities"


@pytest.mark.parametrize(
    ("allowed", "threads", "expected"),
    [
        ({0, 1, 2, 3}, 4, "2;3;4"),  # ids are 1-based; the calling thread keeps core 0
        ({0, 1, 2, 3}, 2, "4"),
        ({4, 6}, 2, "7"),  # a restricted set (taskset, systemd CPUAffinity=)
        ({0, 1}, 1, None),  # no worker threads
        ({0, 1}, 3, None),  # more threads than cores: no core of their own to give
    ],
)
def test_workers_take_the_last_allowed_cores(
    monkeypatch: pytest.MonkeyPatch, allowed: set[int], threads: int, expected: str | None
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: allowed)
    assert worker_affinities(threads) == expected


def test_session_options_pin_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    pinned = _session_options(EngineOptions(threads=2))
    assert pinned.get_session_config_entry(AFFINITIES) == "2"
    free = _session_options(EngineOptions(threads=2, pin=False))
    with pytest.raises(RuntimeError):  # onnxruntime: no such entry
        free.get_session_config_entry(AFFINITIES)


def test_no_pin_flag_reaches_the_engine() -> None:
    assert engine_options(build_parser().parse_args(["run", "bundle", "Hi"])).pin
    args = build_parser().parse_args(["run", "bundle", "Hi", "--no-pin"])
    assert not engine_options(args).pin


def test_daemon_config_pin_reaches_the_engine(tmp_path: Path) -> None:
    from edge_runtime.config import Config
    from edge_runtime.service.model import engine_options as daemon_engine_options

    def options(engine: dict[str, object]) -> EngineOptions:
        config = Config.model_validate({"engine": engine, "service": {"state_dir": str(tmp_path)}})
        return daemon_engine_options(config)

    assert options({}).pin and not options({"pin": False}).pin
