"""Fixtures for the service tests: a real broker, the tiny bundle, daemon subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.broker import BrokerAuth, MosquittoBroker, Pki
from tests.fixtures.disk import SmallDisk, can_mount
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe

DEVICE = "dev1"
LOG_TAIL_LINES = 150
_LOGS = pytest.StashKey[list[tuple[str, Path]]]()


def _keep_log(request: pytest.FixtureRequest, label: str, path: Path) -> None:
    """Show the tail of ``path`` in the report if the test fails (see the hook below)."""
    request.node.stash.setdefault(_LOGS, []).append((label, path))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the daemon and broker logs of a failed test to its report."""
    report = yield
    if report.when == "call" and report.failed:
        for label, path in item.stash.get(_LOGS, []):
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
            report.sections.append((f"{label} ({path}, last {LOG_TAIL_LINES} lines)", tail))
    return report


@pytest.fixture(scope="session")
def service_bundle(paced_bundle: Path) -> Path:
    """A random llama bundle (fp32) at about a millisecond a token: real ONNX, real tokenizer,
    and generations that last long enough for a test to crash, cancel or time them out."""
    return paced_bundle


@pytest.fixture
def broker_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., MosquittoBroker]]:
    started: list[MosquittoBroker] = []

    def make(
        auth: BrokerAuth | None = None, pki: Pki | None = None, **options: Any
    ) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"broker{len(started)}", auth, pki, **options)
        _keep_log(request, f"broker{len(started)} log", broker.log_path)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return broker_factory()


def base_config(broker: MosquittoBroker, bundle: Path, state: Path) -> dict[str, dict[str, Any]]:
    return {
        "broker": {"url": broker.url, "reconnect_min_s": 1, "reconnect_max_s": 2},
        "service": {
            "device_id": DEVICE, "state_dir": str(state), "stats_interval_s": 1.0,
            "default_max_tokens": 16, "max_max_tokens": 230, "shutdown_grace_s": 5.0,
        },
        "model": {"bundle": str(bundle)},
        "engine": {"threads": 1},
    }


@pytest.fixture
def daemon_factory(
    tmp_path: Path, service_bundle: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., DaemonProcess]]:
    """Return ``make(broker, **sections)`` -> a started daemon; all are killed at the end.

    ``make(broker, like=earlier)`` is the same device started again: ``earlier``'s config
    (state folder included), as after a crash or a reboot.
    """
    made: list[DaemonProcess] = []

    def make(
        target: MosquittoBroker, start: bool = True, like: DaemonProcess | None = None,
        **sections: dict[str, Any],
    ) -> DaemonProcess:
        if like is not None and sections:
            raise ValueError("a daemon made like another takes its config as it is")
        folder = tmp_path / f"daemon{len(made)}"
        config = base_config(target, service_bundle, tmp_path / "state")
        for section, values in sections.items():
            config.setdefault(section, {}).update(values)
        proc = DaemonProcess(folder, config)
        if like is not None:
            proc.config_path.write_text(like.config_path.read_text())
        _keep_log(request, f"daemon{len(made)} log", proc.log_path)
        made.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in made:
        proc.kill()


@pytest.fixture
def client_factory() -> Iterator[Callable[..., Probe]]:
    made: list[Probe] = []

    def make(port: int, **kwargs: Any) -> Probe:
        client = Probe(port, **kwargs).connect()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[..., SmallDisk]]:
    """Return ``make(size_mb=16, kind="ext4")`` -> a mounted small file system (root only).

    Ask for it before ``daemon_factory`` so that the daemons are gone before it unmounts.
    """
    if not can_mount():
        pytest.skip("needs root (mount, mkfs.ext4, chattr) to make real disk faults")
    made: list[SmallDisk] = []

    def make(size_mb: float = 16, kind: str = "ext4") -> SmallDisk:
        disk = SmallDisk(tmp_path / f"disk{len(made)}", size_mb, kind).mount()
        made.append(disk)
        return disk

    yield make
    for disk in made:
        disk.unmount()
