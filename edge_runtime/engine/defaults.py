"""Merge a request's sampling settings with the bundle's generation defaults, and check them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.engine.sampling import SamplerConfig
from edge_runtime.engine.types import SamplingParams
from edge_runtime.errors import BadRequest, BundleError

DEFAULT_MAX_TOKENS = 256
_FLOAT_KEYS = ("temperature", "top_p", "min_p", "repetition_penalty")


@dataclass(frozen=True)
class GenerationDefaults:
    """What ``generation.json`` says (Hugging Face ``generation_config`` names accepted)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationDefaults:
        values: dict[str, Any] = {}
        for key in _FLOAT_KEYS:
            if isinstance(data.get(key), int | float):
                values[key] = float(data[key])
        if isinstance(data.get("top_k"), int):
            values["top_k"] = int(data["top_k"])
        limit = data.get("max_tokens", data.get("max_new_tokens"))
        if isinstance(limit, int) and limit > 0:
            values["max_tokens"] = limit
        if data.get("do_sample") is False:
            values["temperature"] = 0.0
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> GenerationDefaults:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read generation defaults ({exc})", path) from exc
        if not isinstance(data, dict):
            raise BundleError("generation defaults must be a JSON object", path)
        return cls.from_dict(data)


@dataclass(frozen=True)
class ResolvedParams:
    """Everything one generation needs, every value decided."""

    sampler: SamplerConfig
    max_tokens: int
    stop: tuple[str, ...]


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def resolve(params: SamplingParams, defaults: GenerationDefaults) -> ResolvedParams:
    """Fill ``None`` fields from ``defaults``; raise :class:`BadRequest` for bad values."""
    config = SamplerConfig(
        temperature=float(_pick(params.temperature, defaults.temperature)),
        top_k=int(_pick(params.top_k, defaults.top_k)),
        top_p=float(_pick(params.top_p, defaults.top_p)),
        min_p=float(_pick(params.min_p, defaults.min_p)),
        repetition_penalty=float(_pick(params.repetition_penalty, defaults.repetition_penalty)),
        seed=params.seed,
    )
    max_tokens = int(_pick(params.max_tokens, defaults.max_tokens))
    _check(config, max_tokens)
    if any(not isinstance(s, str) for s in params.stop):
        raise BadRequest("stop must be a list of strings")
    return ResolvedParams(config, max_tokens, tuple(s for s in params.stop if s))


def _check(config: SamplerConfig, max_tokens: int) -> None:
    problems = [
        f"{name} must be a finite number"
        for name in _FLOAT_KEYS
        if not math.isfinite(getattr(config, name))
    ]
    if max_tokens < 1:
        problems.append(f"max_tokens must be at least 1 (got {max_tokens})")
    if config.temperature < 0:
        problems.append(f"temperature must be 0 or more (got {config.temperature})")
    if not 0.0 < config.top_p <= 1.0:
        problems.append(f"top_p must be in (0, 1] (got {config.top_p})")
    if config.top_k < 0:
        problems.append(f"top_k must be 0 (off) or more (got {config.top_k})")
    if not 0.0 <= config.min_p <= 1.0:
        problems.append(f"min_p must be in [0, 1] (got {config.min_p})")
    if config.repetition_penalty <= 0:
        problems.append(f"repetition_penalty must be above 0 (got {config.repetition_penalty})")
    if config.seed is not None and config.seed < 0:
        problems.append(f"seed must be 0 or more (got {config.seed})")
    if problems:
        raise BadRequest("; ".join(problems))
