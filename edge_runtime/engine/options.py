"""How to load a bundle: execution provider, threads, caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import ConfigError

PROVIDER_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "tensorrt")


@dataclass(frozen=True)
class EngineOptions:
    """Options for :func:`edge_runtime.engine.load_engine`.

    ``provider`` "auto" takes CUDA when this onnxruntime build has it, else the CPU.
    ``require`` turns a missing provider into :class:`errors.ProviderUnavailable` instead of a
    fallback to the CPU. ``threads`` None uses every core this process may run on.
    ``optimized_model_dir`` caches ONNX Runtime's optimized graph for a fast cold start.
    ``default_max_tokens`` replaces the bundle's default answer length.
    ``max_batch`` is how many requests may decode together (graphs that cannot batch run one).
    ``spin`` lets ONNX Runtime's worker threads busy-wait briefly between kernels (ONNX
    Runtime's own default). On cores the engine has to itself it decodes faster; on cores
    shared with other busy work it can cost most of the speed, so turn it off there.
    ``prefix_cache_mb`` bounds the prefix cache (docs/engine.md, "Prefix cache"); 0, the
    default here, turns it off (the service takes its device profile's size).
    """

    provider: str = "auto"
    require: bool = False
    threads: int | None = None
    device_id: int = 0
    fp16: bool = False
    trt_cache_dir: Path | None = None
    trt_workspace_mb: int = 1024
    optimized_model_dir: Path | None = None
    verify_hashes: bool = True
    spin: bool = True
    max_batch: int = 1
    default_max_tokens: int | None = None
    prefix_cache_mb: float = 0

    def __post_init__(self) -> None:
        if self.provider not in PROVIDER_CHOICES:
            raise ConfigError(
                f"provider {self.provider!r} is not one of {', '.join(PROVIDER_CHOICES)}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, not {self.max_batch}")
        if not 0 <= self.prefix_cache_mb <= 1 << 20:
            raise ConfigError(f"prefix_cache_mb must be 0 to {1 << 20}, not {self.prefix_cache_mb}")
        if self.trt_workspace_mb < 1:
            raise ConfigError("trt_workspace_mb must be positive")
