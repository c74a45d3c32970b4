"""Device profiles: detection from each board's files, overrides, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

import devices
from devices import Profile, ProfileError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("board", "expected"),
    [
        ("raspberry-pi-4", "raspberry-pi-4"),
        ("raspberry-pi-4-1gb", "raspberry-pi-4"),
        ("raspberry-pi-5", "raspberry-pi-5"),
        ("jetson-orin-nano", "jetson-orin-nano"),
        ("jetson-agx-orin", "jetson-agx-orin"),
        ("generic-aarch64", "generic-aarch64"),
        ("generic-x86_64", "generic-x86_64"),
    ],
)
def test_each_board_gets_its_profile(board: str, expected: str) -> None:
    assert devices.detect(FIXTURES / board).name == expected


def test_every_shipped_profile_is_reached_by_some_fixture() -> None:
    detected = {devices.detect(path).name for path in FIXTURES.iterdir() if path.is_dir()
                if path.name != "riscv64"}
    assert detected == set(devices.list_profiles())


def test_board_facts_are_read_from_the_tree() -> None:
    nano = devices.probe(FIXTURES / "jetson-orin-nano")
    assert nano.machine == "aarch64"
    assert nano.cpu_count == 6
    assert nano.mem_total_mb == 7824784 // 1024
    assert nano.l4t_release == "36.4.0"
    assert nano.is_jetson
    assert "nvidia,tegra234" in nano.compatible
    pi5 = devices.probe(FIXTURES / "raspberry-pi-5")  # device tree only under /sys/firmware
    assert pi5.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert not pi5.is_jetson


def test_machine_is_guessed_from_cpuinfo_when_no_arch_file() -> None:
    assert devices.probe(FIXTURES / "generic-x86_64").machine == "x86_64"
    assert devices.probe(FIXTURES / "generic-aarch64").machine == "aarch64"


def test_jetson_profiles_ask_for_gpu_providers_and_nodes() -> None:
    nano = devices.detect(FIXTURES / "jetson-orin-nano")
    assert nano.providers[0] == "TensorrtExecutionProvider"
    assert nano.providers[-1] == "CPUExecutionProvider"
    assert any(entry.startswith("/dev/nvmap") for entry in nano.device_allow)
    pi = devices.detect(FIXTURES / "raspberry-pi-4")
    assert pi.providers == ("CPUExecutionProvider",)
    assert pi.device_allow == ()


def test_small_board_gets_limits_that_fit_its_memory() -> None:
    shipped = devices.load_profile("raspberry-pi-4")
    small = devices.detect(FIXTURES / "raspberry-pi-4-1gb")
    total = 944000 // 1024
    assert small.memory_max_mb < shipped.memory_max_mb
    assert small.memory_max_mb <= total
    assert small.memory_budget_mb <= small.memory_high_mb <= small.memory_max_mb
    # A board with enough memory keeps the shipped limits.
    assert devices.detect(FIXTURES / "raspberry-pi-4") == shipped


def test_unknown_machine_is_refused_with_the_known_names() -> None:
    with pytest.raises(ProfileError, match="riscv64") as info:
        devices.detect(FIXTURES / "riscv64")
    assert "raspberry-pi-5" in str(info.value)


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="raspberry-pi-4"):
        devices.load_profile("raspberry-pi-3")


def test_overrides_replace_fields_and_keep_the_rest() -> None:
    base = devices.load_profile("raspberry-pi-5")
    changed = base.merged({"threads": 2, "context_cap": 1024})
    assert (changed.threads, changed.context_cap) == (2, 1024)
    assert changed.providers == base.providers
    assert base.threads == 4  # the shipped profile is not modified
    gpu = devices.load_profile("generic-x86_64").merged(
        {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    )
    assert gpu.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"thread": 2}, "unknown profile field.*thread"),
        ({"name": "other"}, "unknown profile field.*name"),
        ({"threads": -1}, "threads must be a non-negative integer"),
        ({"threads": "four"}, "threads must be a non-negative integer"),
        ({"providers": "CPUExecutionProvider"}, "providers must be a list"),
        ({"providers": ["OpenVINOExecutionProvider"]}, "unknown provider"),
        ({"providers": []}, "at least one provider"),
        ({"default_quant": "int3"}, "default_quant must be one of"),
        ({"memory_max_mb": 100}, "memory_budget_mb <= memory_high_mb <= memory_max_mb"),
        ({"memory": ["swap_to_sd_card"]}, "unknown memory lever.*swap_to_sd_card"),
        ({"memory": "trim_heap"}, "memory must be a list"),
    ],
)
def test_bad_overrides_are_refused_clearly(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        devices.load_profile("raspberry-pi-4").merged(overrides)


def test_every_profile_names_its_memory_levers() -> None:
    for name in devices.list_profiles():
        profile = devices.load_profile(name)
        assert set(profile.memory) <= set(devices.MEMORY_LEVERS), name
        assert "memory" in (devices.profile.PROFILE_DIR / f"{name}.toml").read_text(), name


def test_memory_levers_can_be_turned_off_by_an_override() -> None:
    base = devices.load_profile("raspberry-pi-4")
    assert base.merged({"memory": []}).memory == ()


def test_profile_error_is_a_value_error_for_config_validators() -> None:
    assert issubclass(ProfileError, ValueError)


def test_effective_threads_respects_the_machine() -> None:
    generic = devices.load_profile("generic-aarch64")
    assert generic.effective_threads(8) == 8
    nano = devices.load_profile("jetson-orin-nano")
    assert nano.effective_threads(4) == 4
    assert nano.effective_threads(12) == 6


def test_shipped_profiles_are_frozen_values() -> None:
    profile = devices.load_profile("raspberry-pi-4")
    assert isinstance(profile, Profile)
    with pytest.raises(AttributeError):
        profile.threads = 1  # type: ignore[misc]


def test_a_profile_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    from devices.profile import profile_from_toml

    path = tmp_path / "odd-board.toml"
    path.write_text(
        'description = "x"\narch = "aarch64"\nproviders = ["CPUExecutionProvider"]\n'
        'threads = 1\ndefault_quant = "int4"\ncontext_cap = 512\nmemory_budget_mb = 1\n'
        'memory_high_mb = 2\nmemory_max_mb = 3\ngpu = true\n'
    )
    with pytest.raises(ProfileError, match=r"unknown field.*gpu"):
        profile_from_toml(path)


def test_engine_provider_follows_the_first_provider() -> None:
    assert devices.load_profile("jetson-agx-orin").engine_provider == "tensorrt"
    assert devices.load_profile("raspberry-pi-5").engine_provider == "cpu"
    cuda = devices.load_profile("generic-x86_64").merged(
        {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    )
    assert cuda.engine_provider == "cuda"
