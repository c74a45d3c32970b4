"""Load and warm the engine the config names, with the device profile's settings."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from edge_runtime.config import Config
from edge_runtime.engine.types import Engine, SamplingParams
from edge_runtime.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_profile(config: Config) -> Any | None:
    """Return the device profile (named, or detected for "auto") with overrides applied.

    Returns None when the ``devices`` package offers no profiles (yet); the engine then uses
    its own defaults.
    """
    try:
        import devices
    except ImportError:
        return None
    load = getattr(devices, "load_profile", None)
    detect = getattr(devices, "detect", None)
    if load is None or detect is None:
        return None
    name = config.device.profile
    try:
        profile = detect() if name == "auto" else load(name)
    except ValueError as exc:
        raise ConfigError(f"device.profile: {exc}") from None
    try:
        return profile.merged(config.device.overrides) if config.device.overrides else profile
    except ValueError as exc:
        raise ConfigError(f"device.overrides: {exc}") from None


def engine_threads(config: Config, profile: Any | None) -> int | None:
    """Pick the thread count: the config's, else the profile's, else the engine default."""
    if config.engine.threads:
        return config.engine.threads
    if profile is not None and hasattr(profile, "effective_threads"):
        return int(profile.effective_threads(os.cpu_count()))
    return None


def engine_provider(config: Config, profile: Any | None) -> str:
    """Pick the provider: the config's, else (for "auto") the device profile's first choice."""
    if config.engine.provider != "auto" or profile is None:
        return config.engine.provider
    return str(getattr(profile, "engine_provider", "auto"))


def load_model(config: Config) -> Engine:
    """Load the bundle from the config and run one short generation to warm it up."""
    from edge_runtime.engine import EngineOptions, load_engine

    profile = resolve_profile(config)
    options = EngineOptions(
        provider=engine_provider(config, profile),
        require=config.engine.require,
        threads=engine_threads(config, profile),
    )
    assert config.model.bundle is not None
    started = time.perf_counter()
    engine = load_engine(config.model.bundle, options)
    engine.generate("Hello", SamplingParams(max_tokens=2, temperature=0.0), chat=False)
    log.info("model loaded and warmed in %.2f s", time.perf_counter() - started)
    return engine
