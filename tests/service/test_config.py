"""The typed config: defaults, one line per fault, secrets from files only."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.config import build_config, load_config
from edge_runtime.errors import ConfigError


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(data, check_files=False)
    return info.value.problems


def test_defaults_follow_the_protocol_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = build_config({}, check_files=False)
    assert config.service.topic_prefix == "edge"
    assert config.service.queue_size == 16
    assert config.broker.protocol == "5"
    assert config.broker.port == 1883
    assert str(config.service.state_dir) == "/var/lib/edge-runtime"


def test_systemd_state_directory_is_the_default_state_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/private/edge-runtime:/other")
    assert str(build_config({}, check_files=False).service.state_dir) == (
        "/var/lib/private/edge-runtime"
    )


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"broker": {"url": "tcp://h:1"}}, "broker.url"),
        ({"broker": {"url": "mqtt://h:99999"}}, "broker.url"),
        ({"broker": {"url": "mqtt://user:pw@h"}}, "broker.url"),
        ({"broker": {"protocol": 4}}, "broker.protocol"),
        ({"broker": {"keepalive": "30"}}, "broker.keepalive"),
        ({"broker": {"tls": {"cert_file": "/c.pem"}}}, "broker.tls"),
        ({"service": {"topic_prefix": "a/b"}}, "service.topic_prefix"),
        ({"service": {"shared_group": "#"}}, "service.shared_group"),
        ({"service": {"default_max_tokens": 50, "max_max_tokens": 10}}, "service"),
        ({"engine": {"provider": "gpu"}}, "engine.provider"),
        ({"servise": {}}, "servise"),
        ({"model": {"bundle": "/x", "extra": 1}}, "model.extra"),
    ],
)
def test_each_bad_value_is_one_line_naming_its_key(data: dict, key: str) -> None:
    problems = _problems(data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: "), problems


def test_port_and_tls_from_the_url() -> None:
    config = build_config({"broker": {"url": "mqtts://gw.local"}}, check_files=False)
    assert config.broker.port == 8883 and config.broker.uses_tls


def test_password_comes_from_the_systemd_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mqtt-password").write_text("hunter2\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = build_config(
        {"broker": {"username": "dev", "password_file": "mqtt-password"}}, check_files=False
    )
    assert config.broker.password() == "hunter2"


def test_missing_files_are_reported_with_their_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"broker.password_file": str(tmp_path / "nope"),
                           "broker.tls": {"ca_file": str(tmp_path / "ca.pem")},
                           "model.bundle": str(tmp_path)})
    keys = sorted(p.split(":")[0] for p in info.value.problems)
    assert keys == ["broker.password_file", "broker.password_file", "broker.tls.ca_file",
                    "model.bundle"]
