"""Provider choice: fallback with one warning, or a clear failure when required."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_runtime.engine.options import EngineOptions
from edge_runtime.engine.providers import (
    CPU,
    CUDA,
    TENSORRT,
    check_session_providers,
    plan_providers,
)
from edge_runtime.errors import ConfigError, ProviderUnavailable

CPU_ONLY = [CPU]
JETSON = [TENSORRT, CUDA, CPU]


def test_auto_takes_cuda_when_present_else_cpu() -> None:
    assert plan_providers(EngineOptions(), JETSON).providers == (CUDA, CPU)
    assert plan_providers(EngineOptions(), CPU_ONLY).providers == (CPU,)


def test_missing_gpu_falls_back_with_one_warning_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        plan = plan_providers(EngineOptions(provider="tensorrt"), CPU_ONLY)
    assert plan.providers == (CPU,)
    assert plan.fell_back
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert TENSORRT in warnings[0].getMessage() and CUDA in warnings[0].getMessage()


def test_require_fails_instead_of_falling_back() -> None:
    with pytest.raises(ProviderUnavailable, match=CUDA) as info:
        plan_providers(EngineOptions(provider="cuda", require=True), CPU_ONLY)
    assert info.value.code == "model_unavailable"


def test_tensorrt_options_for_a_jetson(tmp_path: Path) -> None:
    options = EngineOptions(
        provider="tensorrt", device_id=1, fp16=True, trt_cache_dir=tmp_path, trt_workspace_mb=512
    )
    plan = plan_providers(options, JETSON)
    assert plan.providers == (TENSORRT, CUDA, CPU)
    trt, cuda, cpu = plan.options
    assert trt["device_id"] == "1" and cuda["device_id"] == "1"
    assert trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_max_workspace_size"] == str(512 * 1024 * 1024)
    assert cpu == {}
    assert plan.device == "cuda"


def test_cpu_is_never_missing() -> None:
    plan = plan_providers(EngineOptions(provider="cpu", require=True), [])
    assert plan.providers == (CPU,)
    assert plan.device == "cpu"


def test_gpu_provider_that_failed_to_start_is_caught() -> None:
    plan = plan_providers(EngineOptions(provider="cuda"), JETSON)
    check_session_providers(plan, [CUDA, CPU], require=True)
    with pytest.raises(ProviderUnavailable):
        check_session_providers(plan, [CPU], require=True)
    check_session_providers(plan, [CPU], require=False)  # warns, keeps going


def test_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        EngineOptions(provider="npu")
