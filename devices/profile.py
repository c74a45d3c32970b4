"""The device profile: what a board runs best with, as a frozen value."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent / "profiles"
KNOWN_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
QUANTS = ("int4", "int8", "fp16", "fp32")
# What the runtime may do with its pages (edge_runtime/memory.py says what each one does).
MEMORY_LEVERS = (
    "trim_heap",
    "huge_pages",
)


class ProfileError(ValueError):
    """A profile is unknown, or its data (or an override) is invalid."""


@dataclass(frozen=True)
class Match:
    """What a board exposes that identifies it; any one hit is enough."""

    model: tuple[str, ...] = ()  # substrings of the device-tree model string
    compatible: tuple[str, ...] = ()  # prefixes of device-tree compatible entries
    arch: tuple[str, ...] = ()  # machine names (uname -m) for generic profiles


@dataclass(frozen=True)
class Profile:
    """Settings for one kind of board; load with :func:`devices.load_profile`."""

    name: str
    description: str
    arch: str
    providers: tuple[str, ...]
    threads: int  # 0 means one per online CPU
    default_quant: str
    context_cap: int
    memory_budget_mb: int
    memory_high_mb: int
    memory_max_mb: int
    device_allow: tuple[str, ...] = ()
    supplementary_groups: tuple[str, ...] = ()
    memory: tuple[str, ...] = ()  # memory levers (MEMORY_LEVERS); empty: none
    prefix_cache_mb: int = 64  # bound of the engine's prefix cache; 0 turns it off
    notes: str = ""
    match: Match = field(default_factory=Match)

    def __post_init__(self) -> None:
        _validate(self)

    def merged(self, overrides: Mapping[str, Any]) -> Profile:
        """Return a copy with ``overrides`` applied; unknown or invalid keys raise."""
        allowed = {f.name for f in fields(self)} - {"match", "name"}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ProfileError(
                f"unknown profile field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        values = {key: _coerce(key, value) for key, value in overrides.items()}
        return dataclasses.replace(self, **values)

    @property
    def engine_provider(self) -> str:
        """Return the engine's provider choice for this profile: tensorrt, cuda or cpu."""
        first = self.providers[0]
        return {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda"}.get(
            first, "cpu"
        )

    def effective_threads(self, cpu_count: int | None) -> int:
        """Return the thread count to use on a machine with ``cpu_count`` CPUs."""
        cpus = max(1, cpu_count or 1)
        return cpus if self.threads == 0 else min(self.threads, cpus)

    def systemd_dropin(self) -> str:
        """Render a systemd drop-in with this profile's resource limits and device access."""
        lines = [
            f"# Generated from device profile {self.name!r} by edge-runtime doctor.",
            "[Service]",
            f"MemoryHigh={self.memory_high_mb}M",
            f"MemoryMax={self.memory_max_mb}M",
        ]
        if self.device_allow:
            # GPU nodes must be visible: lift PrivateDevices, then allow only these nodes.
            lines += ["PrivateDevices=no", "DevicePolicy=closed"]
            lines += [f"DeviceAllow={entry}" for entry in self.device_allow]
            # CUDA and TensorRT compile kernels at run time (writable + executable pages).
            lines.append("MemoryDenyWriteExecute=no")
        if self.supplementary_groups:
            # Group ownership of the device nodes must be real inside the service.
            lines += [f"SupplementaryGroups={' '.join(self.supplementary_groups)}",
                      "PrivateUsers=no"]
        if "TensorrtExecutionProvider" in self.providers:
            # TensorRT builds its engines on the first start: allow it the time.
            lines.append("TimeoutStartSec=30min")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as plain data (for JSON output)."""
        data = dataclasses.asdict(self)
        data.pop("match")
        return data


_INT_FIELDS = ("threads", "context_cap", "memory_budget_mb", "memory_high_mb", "memory_max_mb",
               "prefix_cache_mb")
_TUPLE_FIELDS = ("providers", "device_allow", "supplementary_groups", "memory")


def _coerce(key: str, value: Any) -> Any:
    if key in _TUPLE_FIELDS:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ProfileError(f"profile field {key} must be a list of strings")
        return tuple(value)
    return value


def _validate(p: Profile) -> None:
    for key in _INT_FIELDS:
        value = getattr(p, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProfileError(f"profile {p.name}: {key} must be a non-negative integer")
    for key in ("name", "description", "arch", "default_quant", "notes"):
        if not isinstance(getattr(p, key), str):
            raise ProfileError(f"profile {p.name}: {key} must be a string")
    for key in _TUPLE_FIELDS:
        if not all(isinstance(item, str) and item for item in getattr(p, key)):
            raise ProfileError(f"profile {p.name}: {key} must hold non-empty strings")
    if p.default_quant not in QUANTS:
        raise ProfileError(f"profile {p.name}: default_quant must be one of {', '.join(QUANTS)}")
    if not p.providers:
        raise ProfileError(f"profile {p.name}: providers must name at least one provider")
    unknown = [name for name in p.providers if name not in KNOWN_PROVIDERS]
    if unknown:
        raise ProfileError(
            f"profile {p.name}: unknown provider(s) {', '.join(unknown)}; "
            f"known: {', '.join(KNOWN_PROVIDERS)}"
        )
    levers = [name for name in p.memory if name not in MEMORY_LEVERS]
    if levers:
        raise ProfileError(
            f"profile {p.name}: unknown memory lever(s) {', '.join(levers)}; "
            f"known: {', '.join(MEMORY_LEVERS)}"
        )
    if p.context_cap < 1 or p.memory_budget_mb < 1:
        raise ProfileError(f"profile {p.name}: context_cap and memory_budget_mb must be positive")
    if not p.memory_budget_mb <= p.memory_high_mb <= p.memory_max_mb:
        raise ProfileError(
            f"profile {p.name}: need memory_budget_mb <= memory_high_mb <= memory_max_mb"
        )


def profile_from_toml(path: Path) -> Profile:
    """Read one profile file; the profile's name is the file's stem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from exc
    return profile_from_dict(path.stem, data)


def profile_from_dict(name: str, data: Mapping[str, Any]) -> Profile:
    """Build a profile from parsed TOML; unknown keys raise."""
    body = dict(data)
    match_data = body.pop("match", {})
    allowed = {f.name for f in fields(Profile)} - {"match", "name"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ProfileError(f"profile {name}: unknown field(s) {', '.join(unknown)}")
    match_keys = {f.name for f in fields(Match)}
    if not isinstance(match_data, dict) or set(match_data) - match_keys:
        raise ProfileError(f"profile {name}: [match] takes only {', '.join(sorted(match_keys))}")
    values = {key: _coerce(key, value) for key, value in body.items()}
    match = Match(**{key: tuple(value) for key, value in match_data.items()})
    try:
        return Profile(name=name, match=match, **values)
    except TypeError as exc:
        raise ProfileError(f"profile {name}: {exc}") from exc
