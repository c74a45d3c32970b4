"""``edge-runtime doctor`` on this machine and on simulated boards, with real brokers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import devices
from edge_runtime.cli import main
from edge_runtime.hugepages import TUNABLE
from tests.fixtures.broker import MosquittoBroker, User, free_port

FIXTURES = Path(__file__).parent / "fixtures"


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    """Run doctor --json in-process; return the exit code and the checks by name."""
    code = main(["doctor", "--json", "--timeout", "2", *args])
    doc = json.loads(capsys.readouterr().out)
    assert doc["blocking"] == (code != 0)
    return code, {check["check"]: check for check in doc["checks"]}


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(text)
    return path


def test_this_machine_with_a_good_bundle_and_broker_is_ready(
    capsys: pytest.CaptureFixture[str], good_bundle: Path, open_broker: MosquittoBroker
) -> None:
    code, checks = doctor(capsys, "--model", str(good_bundle), "--broker", open_broker.url)
    assert code == 0
    assert {c["status"] for c in checks.values()} <= {"OK", "WARN"}
    assert checks["profile"]["summary"].startswith(devices.detect().name)
    assert "verified" in checks["bundle"]["summary"]
    assert checks["broker"]["status"] == "OK"
    assert checks["memory"]["status"] == "OK"


def test_text_output_is_one_line_per_check_with_a_verdict(
    capsys: pytest.CaptureFixture[str], good_bundle: Path, open_broker: MosquittoBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As the edge-runtime command would have started it (the kernel's mode decides the rest).
    monkeypatch.setenv("GLIBC_TUNABLES", TUNABLE)
    code = main(["doctor", "--model", str(good_bundle), "--broker", open_broker.url])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    for name in ("config", "board", "profile", "onnxruntime", "bundle", "memory", "broker"):
        assert any(line.split()[1:2] == [name] for line in out if line.startswith("  OK")), name
    assert any(line.split()[1:3] == ["huge", "pages"] for line in out if line.startswith("  OK"))
    assert out[-1] == "0 FAIL, 0 WARN: ready to serve"


def test_simulated_pi_with_a_tampered_bundle_fails(
    capsys: pytest.CaptureFixture[str], tampered_bundle: Path, open_broker: MosquittoBroker
) -> None:
    root = FIXTURES / "raspberry-pi-4"
    code, checks = doctor(
        capsys, "--root", str(root), "--model", str(tampered_bundle), "--broker", open_broker.url
    )
    assert code == 1
    assert checks["profile"]["summary"].startswith("raspberry-pi-4 (detected)")
    assert "Raspberry Pi 4 Model B" in checks["board"]["summary"]
    assert checks["bundle"]["status"] == "FAIL"
    assert "tokenizer.json" in checks["bundle"]["summary"]
    assert checks["bundle"]["fix"]
    assert checks["broker"]["status"] == "OK"


def test_simulated_pi_with_an_unreachable_broker_fails(
    capsys: pytest.CaptureFixture[str], good_bundle: Path
) -> None:
    nobody = f"mqtt://127.0.0.1:{free_port()}"
    code = main(["doctor", "--root", str(FIXTURES / "raspberry-pi-5"), "--model",
                 str(good_bundle), "--broker", nobody, "--timeout", "2"])
    out = capsys.readouterr().out
    assert code == 1
    broker_line = next(line for line in out.splitlines() if " broker " in line)
    assert broker_line.split()[0] == "FAIL" and "refused" in broker_line
    assert "fix: check [broker] url" in out
    assert out.splitlines()[-1].endswith("serving is blocked")


def test_wrong_and_right_credentials_are_told_apart(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_bundle: Path,
    auth_broker: MosquittoBroker, doctor_user: User,
) -> None:
    secret = tmp_path / "broker-password"
    secret.write_text("not-the-password\n")
    config = write_config(tmp_path, (
        f'[broker]\nurl = "{auth_broker.url}"\nusername = "{doctor_user.name}"\n'
        f'password_file = "{secret}"\n[model]\nbundle = "{good_bundle}"\n'
    ))
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 1
    assert checks["broker"]["status"] == "FAIL"
    assert "password_file" in checks["broker"]["fix"]
    secret.write_text(doctor_user.password + "\n")
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 0, checks["broker"]
    assert f"as {doctor_user.name}" in checks["broker"]["summary"]


def test_a_missing_password_file_is_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_bundle: Path,
    auth_broker: MosquittoBroker,
) -> None:
    config = write_config(tmp_path, (
        f'[broker]\nurl = "{auth_broker.url}"\nusername = "u"\n'
        f'password_file = "{tmp_path / "absent"}"\n[model]\nbundle = "{good_bundle}"\n'
    ))
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 1
    assert "password file" in checks["broker"]["summary"]


def test_a_bundle_too_big_for_the_memory_limit_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_bundle: Path,
    open_broker: MosquittoBroker,
) -> None:
    config = write_config(tmp_path, (
        f'[model]\nbundle = "{good_bundle}"\n[device]\nprofile = "raspberry-pi-4"\n'
        "overrides = { memory_budget_mb = 8, memory_high_mb = 9, memory_max_mb = 10 }\n"
    ))
    code, checks = doctor(capsys, "--config", str(config), "--broker", open_broker.url)
    assert code == 1
    assert checks["memory"]["status"] == "FAIL"
    assert "MemoryMax 10 MB" in checks["memory"]["summary"]
    assert "from config, with overrides" in checks["profile"]["summary"]


def test_simulated_jetson_warns_about_the_missing_gpu_build(
    capsys: pytest.CaptureFixture[str], good_bundle: Path, open_broker: MosquittoBroker
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; nothing to warn about")
    code, checks = doctor(capsys, "--root", str(FIXTURES / "jetson-orin-nano"),
                          "--model", str(good_bundle), "--broker", open_broker.url)
    assert code == 0  # the CPU fallback still serves
    assert checks["onnxruntime"]["status"] == "WARN"
    assert "JetPack (L4T 36.4.0)" in checks["onnxruntime"]["fix"]


def test_unknown_profile_in_config_is_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_bundle: Path,
    open_broker: MosquittoBroker,
) -> None:
    config = write_config(tmp_path, f'[model]\nbundle = "{good_bundle}"\n'
                                    '[device]\nprofile = "raspberry-pi-3"\n')
    code, checks = doctor(capsys, "--config", str(config), "--broker", open_broker.url)
    assert code == 1
    assert checks["profile"]["status"] == "FAIL"
    assert "raspberry-pi-5" in checks["profile"]["fix"]


def test_no_bundle_anywhere_is_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    open_broker: MosquittoBroker,
) -> None:
    monkeypatch.setenv("EDGE_RUNTIME_MODELS", str(tmp_path / "no-models"))
    config = write_config(tmp_path, "")
    code, checks = doctor(capsys, "--config", str(config), "--broker", open_broker.url)
    assert code == 1
    assert "prepare-default" in checks["bundle"]["fix"]


def test_systemd_dropin_for_a_simulated_jetson(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--systemd-dropin", "--root", str(FIXTURES / "jetson-agx-orin")])
    out = capsys.readouterr().out
    assert code == 0
    assert out == devices.load_profile("jetson-agx-orin").systemd_dropin()
    assert "DeviceAllow=/dev/nvmap rw" in out


def test_a_simulated_pi5_with_16k_pages_gets_no_huge_pages(
    capsys: pytest.CaptureFixture[str], good_bundle: Path, open_broker: MosquittoBroker
) -> None:
    """The Pi 5's kernel has 16 KiB pages, so its huge pages are 32 MiB: not asked for."""
    code, checks = doctor(capsys, "--root", str(FIXTURES / "raspberry-pi-5"),
                          "--model", str(good_bundle), "--broker", open_broker.url)
    assert code == 0
    assert checks["huge pages"]["summary"].startswith("off: huge pages are 32 MiB")


def test_huge_pages_left_out_of_the_memory_policy_are_reported_off(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_bundle: Path,
    open_broker: MosquittoBroker,
) -> None:
    config = write_config(tmp_path, (
        f'[model]\nbundle = "{good_bundle}"\n[device]\nprofile = "generic-x86_64"\n'
        "overrides = { memory = [] }\n"
    ))
    code, checks = doctor(capsys, "--config", str(config), "--broker", open_broker.url)
    assert code == 0
    assert checks["huge pages"]["summary"] == (
        "off: not in profile generic-x86_64's memory policy"
    )
