"""Choose the execution providers for a session: the one place that builds that list.

"auto" takes CUDA when the installed onnxruntime has it, else the CPU. A provider that was
asked for but is not available falls back to the CPU with one warning naming what is
missing, unless ``require`` is set, which raises :class:`ProviderUnavailable` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from edge_runtime.engine.options import EngineOptions
from edge_runtime.errors import ProviderUnavailable

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

_WANTED: dict[str, tuple[str, ...]] = {
    "cpu": (CPU,),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
}

ProviderOptions = dict[str, str]


@dataclass(frozen=True)
class ProviderPlan:
    """The providers to hand to ``InferenceSession``, best first, with their options."""

    providers: tuple[str, ...]
    options: tuple[ProviderOptions, ...]
    fell_back: bool = False

    @property
    def primary(self) -> str:
        return self.providers[0]

    @property
    def device(self) -> str:
        """Where the KV cache lives: "cuda" for GPU providers, else "cpu"."""
        return "cpu" if self.primary == CPU else "cuda"

    def as_session_args(self) -> list[tuple[str, ProviderOptions]]:
        return list(zip(self.providers, self.options, strict=True))


def available_providers() -> list[str]:
    """Return the providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _wanted(options: EngineOptions, available: Sequence[str]) -> tuple[str, ...]:
    if options.provider == "auto":
        return (CUDA, CPU) if CUDA in available else (CPU,)
    return _WANTED[options.provider]


def _options_for(name: str, options: EngineOptions) -> ProviderOptions:
    if name == CUDA:
        return {"device_id": str(options.device_id)}
    if name == TENSORRT:
        return _tensorrt_options(options)
    return {}


def _tensorrt_options(options: EngineOptions) -> ProviderOptions:
    trt: ProviderOptions = {
        "device_id": str(options.device_id),
        "trt_fp16_enable": "True" if options.fp16 else "False",
        "trt_max_workspace_size": str(options.trt_workspace_mb * 1024 * 1024),
    }
    if options.trt_cache_dir is not None:
        cache = str(options.trt_cache_dir)
        trt.update(
            trt_engine_cache_enable="True",
            trt_engine_cache_path=cache,
            trt_timing_cache_enable="True",
            trt_timing_cache_path=cache,
        )
    return trt


def plan_providers(options: EngineOptions, available: Sequence[str] | None = None) -> ProviderPlan:
    """Return the provider list for ``options`` given the ``available`` providers.

    Raises :class:`ProviderUnavailable` when ``options.require`` is set and a wanted
    provider is missing; otherwise drops what is missing with one warning.
    """
    have = list(available) if available is not None else available_providers()
    wanted = _wanted(options, have)
    missing = [name for name in wanted if name not in have and name != CPU]
    if missing and options.require:
        raise ProviderUnavailable(
            f"provider {options.provider!r} needs {', '.join(missing)}, which this "
            f"onnxruntime build does not offer (it has {', '.join(have) or 'none'})"
        )
    chosen = tuple(name for name in wanted if name in have or name == CPU)
    if missing:
        log.warning(
            "execution provider %s not available (missing %s); running on %s",
            options.provider,
            ", ".join(missing),
            chosen[0],
        )
    return ProviderPlan(
        providers=chosen,
        options=tuple(_options_for(name, options) for name in chosen),
        fell_back=bool(missing),
    )


def check_session_providers(plan: ProviderPlan, active: Sequence[str], require: bool) -> None:
    """Check the session really runs on the planned primary provider.

    onnxruntime can list a GPU provider yet fail to load it (missing CUDA libraries) and then
    quietly run on the CPU; treat that like a missing provider.
    """
    if plan.primary == CPU or plan.primary in active:
        return
    message = (
        f"{plan.primary} is installed but failed to start (check the CUDA/TensorRT "
        f"libraries); the session runs on {', '.join(active) or 'nothing'}"
    )
    if require:
        raise ProviderUnavailable(message)
    log.warning("%s", message)
