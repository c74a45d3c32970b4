"""Load and warm the engine the config names, with the device profile's settings."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import devices
from devices import Profile
from edge_runtime.config import Config
from edge_runtime.engine import EngineOptions, GenerationRequest, OnnxEngine, load_engine
from edge_runtime.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_profile(config: Config) -> Profile:
    """Return the device profile (named, or detected for "auto") with overrides applied."""
    name = config.device.profile
    try:
        profile = devices.detect() if name == "auto" else devices.load_profile(name)
    except ValueError as exc:
        raise ConfigError(f"device.profile: {exc}") from None
    try:
        return profile.merged(config.device.overrides) if config.device.overrides else profile
    except ValueError as exc:
        raise ConfigError(f"device.overrides: {exc}") from None


def engine_threads(config: Config, profile: Profile) -> int:
    """Pick the thread count: the config's, else the profile's."""
    if config.engine.threads:
        return config.engine.threads
    return int(profile.effective_threads(os.cpu_count()))


def engine_provider(config: Config, profile: Profile) -> str:
    """Pick the provider: the config's, else (for "auto") the device profile's first choice."""
    if config.engine.provider != "auto":
        return config.engine.provider
    return str(profile.engine_provider)


def engine_options(config: Config) -> EngineOptions:
    """Build the engine's options; its caches live in the service's state folder."""
    profile = resolve_profile(config)
    state = Path(config.service.state_dir)
    return EngineOptions(
        provider=engine_provider(config, profile),
        require=config.engine.require,
        threads=engine_threads(config, profile),
        optimized_model_dir=state / "ort-cache",
        trt_cache_dir=state / "trt-cache",
        spin=config.engine.spin,
        max_batch=config.engine.max_batch,
        default_max_tokens=config.service.default_max_tokens,
    )


def load_model(config: Config) -> OnnxEngine:
    """Load the bundle from the config and run one short generation to warm it up."""
    options = engine_options(config)
    if config.model.bundle is None:
        raise ConfigError("model.bundle: required to serve (set it or pass --model)")
    started = time.perf_counter()
    engine = load_engine(config.model.bundle, options)
    engine.generate(GenerationRequest(prompt="Hello", chat=False, max_tokens=2, temperature=0.0))
    log.info("model loaded and warmed in %.2f s", time.perf_counter() - started)
    return engine
