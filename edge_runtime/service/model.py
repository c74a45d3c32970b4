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
from edge_runtime.engine.prefix_store import cache_key, restore, save
from edge_runtime.engine.warm import warm
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


def prefix_cache_mb(config: Config, profile: Profile) -> int:
    """Bound the prefix cache: the config's, else the device profile's."""
    if config.engine.prefix_cache_mb is not None:
        return config.engine.prefix_cache_mb
    return int(profile.prefix_cache_mb)


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
        prefix_cache_mb=prefix_cache_mb(config, profile),
    )


def load_model(config: Config) -> OnnxEngine:
    """Load the bundle from the config and run one short generation to warm it up."""
    options = engine_options(config)
    if config.model.bundle is None:
        raise ConfigError("model.bundle: required to serve (set it or pass --model)")
    started = time.perf_counter()
    engine = load_engine(config.model.bundle, options)
    prepare_prefix_cache(engine, config)
    engine.generate(GenerationRequest(prompt="Hello", chat=False, max_tokens=2, temperature=0.0))
    log.info("model loaded and warmed in %.2f s", time.perf_counter() - started)
    return engine


def prefix_cache_file(config: Config) -> Path:
    return Path(config.service.state_dir) / "prefix-cache.bin"


def prepare_prefix_cache(engine: OnnxEngine, config: Config) -> None:
    """Read back the saved prefix cache (if kept), then the warm prompts."""
    cache = engine.prefix_cache
    if cache is None:
        return
    if config.engine.save_prefix_cache:
        key = cache_key(engine.bundle_dir / "manifest.json")
        blocks = restore(cache, prefix_cache_file(config), key)
        if blocks:
            log.info("prefix cache: %d block(s), %d tokens read back", blocks, cache.tokens)
    started = time.perf_counter()
    read = warm(engine, [prompt.text() for prompt in config.engine.warm_prompts])
    if read:
        log.info("warm prompts: %d tokens read in %.2f s", read, time.perf_counter() - started)


def save_prefix_cache(engine: OnnxEngine, config: Config) -> None:
    """Write the prefix cache to the state folder, when the config keeps it; never raise."""
    cache = engine.prefix_cache
    if cache is None or not config.engine.save_prefix_cache:
        return
    try:
        key = cache_key(engine.bundle_dir / "manifest.json")
        blocks = save(cache, prefix_cache_file(config), key)
    except OSError as exc:
        log.warning("prefix cache not saved: %s", exc)
        return
    log.info("prefix cache: %d block(s) saved", blocks)
