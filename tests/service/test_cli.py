"""``edge-runtime ask`` and ``serve --check-config`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import REPO, DaemonProcess, write_config
from tests.service.schemas import assert_final


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_ask_streams_the_answer_and_json_prints_the_final(
    broker: MosquittoBroker, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    daemon_factory(broker)
    common = ["--broker", broker.url, "--device-id", DEVICE, "--timeout", "30"]
    streamed = _cli("ask", "Hello there", "--max-tokens", "20", "--temperature", "0", *common)
    as_json = _cli("ask", "Hello there", "--max-tokens", "20", "--temperature", "0", "--json",
                   *common)
    assert streamed.returncode == 0, streamed.stderr
    assert as_json.returncode == 0, as_json.stderr
    final = json.loads(as_json.stdout)
    assert_final(final)
    assert streamed.stdout.rstrip("\n") == final["text"], "greedy: same answer both ways"


def test_ask_reports_error_replies_and_timeouts(
    broker: MosquittoBroker, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    daemon_factory(broker)
    refused = _cli("ask", "x", "--broker", broker.url, "--device-id", DEVICE,
                   "--max-tokens", "999999", "--timeout", "30")
    assert refused.returncode == 1 and "bad_request" in refused.stderr
    nobody = _cli("ask", "x", "--broker", broker.url, "--device-id", "no-such-device",
                  "--timeout", "1.5")
    assert nobody.returncode == 2 and "no answer" in nobody.stderr


def test_check_config_accepts_a_good_file(tmp_path: Path, service_bundle: Path) -> None:
    config = write_config(tmp_path / "ok.toml", {
        "broker": {"url": "mqtts://broker.example:8883", "protocol": 5},
        "service": {"device_id": "gw-7", "state_dir": str(tmp_path / "state")},
        "model": {"bundle": str(service_bundle)},
    })
    done = _cli("serve", "--config", str(config), "--check-config")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "gw-7" in done.stdout


def test_check_config_refuses_each_fault_on_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", {
        "broker": {"url": "http://x", "keepalive": 0, "colour": "blue"},
        "service": {"queue_size": -1, "device_id": "a/b"},
        "model": {"bundle": str(tmp_path / "missing")},
    })
    done = _cli("serve", "--config", str(config), "--check-config")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    keys = [line.split(": ")[2] for line in lines]
    assert sorted(keys) == ["broker.colour", "broker.keepalive", "broker.url",
                            "service.device_id", "service.queue_size"], lines


def test_check_config_flags_override_the_file(tmp_path: Path, service_bundle: Path) -> None:
    done = _cli("serve", "--config", str(tmp_path / "none.toml"), "--check-config")
    assert done.returncode == 1 and "no such config file" in done.stderr
    config = write_config(tmp_path / "min.toml", {"service": {"state_dir": str(tmp_path)}})
    done = _cli("serve", "--config", str(config), "--model", str(service_bundle),
                "--broker", "mqtt://10.0.0.5:1884", "--device-id", "field-3", "--check-config")
    assert done.returncode == 0, done.stderr
    assert "field-3" in done.stdout and "mqtt://10.0.0.5:1884" in done.stdout


def test_check_config_validates_the_device_profile(tmp_path: Path, service_bundle: Path) -> None:
    base = {"service": {"state_dir": str(tmp_path)}, "model": {"bundle": str(service_bundle)}}
    unknown = write_config(tmp_path / "p1.toml", {**base, "device": {"profile": "no-such-board"}})
    done = _cli("serve", "--config", str(unknown), "--check-config")
    assert done.returncode == 1 and "config: device.profile: " in done.stderr
    bad = write_config(tmp_path / "p2.toml",
                       {**base, "device": {"overrides": {"colour": "red"}}})
    done = _cli("serve", "--config", str(bad), "--check-config")
    assert done.returncode == 1 and "config: device.overrides: " in done.stderr
