"""The bundle's generation defaults, and the one place a request's ``None`` fields are decided."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_runtime.engine.request import Sampling
from edge_runtime.engine.sampling import SamplerConfig
from edge_runtime.errors import BundleError

DEFAULT_MAX_TOKENS = 256
_SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerConfig))


@dataclass(frozen=True)
class GenerationDefaults:
    """What ``generation.json`` says (Hugging Face ``generation_config`` names accepted)."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    max_tokens: int = DEFAULT_MAX_TOKENS

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationDefaults:
        """Read the sampler's fields by name; values the request model would refuse are errors."""
        values = {k: data[k] for k in _SAMPLER_FIELDS if k != "seed" and data.get(k) is not None}
        if data.get("do_sample") is False:
            values["temperature"] = 0.0
        values = {k: float(v) if isinstance(v, int) and k != "top_k" else v
                  for k, v in values.items()}
        limit = data.get("max_tokens", data.get("max_new_tokens"))
        try:
            Sampling.model_validate(values)
        except ValidationError as exc:
            raise BundleError(f"generation defaults refused: {exc.errors()[0]['msg']}") from None
        max_tokens = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
        return cls(SamplerConfig(**values), max_tokens)

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
class Resolved:
    """Everything one generation needs, every value decided."""

    sampler: SamplerConfig
    max_tokens: int
    stop: tuple[str, ...]


def resolve(request: Sampling, defaults: GenerationDefaults) -> Resolved:
    """Take each sampler field from ``request``, or from ``defaults`` where it is ``None``."""
    sampler = SamplerConfig(**{
        name: getattr(defaults.sampler, name) if getattr(request, name) is None
        else getattr(request, name)
        for name in _SAMPLER_FIELDS
    })
    max_tokens = defaults.max_tokens if request.max_tokens is None else request.max_tokens
    return Resolved(sampler, max_tokens, tuple(request.stop))
