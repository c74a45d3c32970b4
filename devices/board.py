"""Read what a board exposes about itself, relative to a root folder (fixtures in tests)."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

_MODEL_PATHS = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
_COMPATIBLE_PATHS = ("proc/device-tree/compatible", "sys/firmware/devicetree/base/compatible")
_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


@dataclass(frozen=True)
class BoardInfo:
    """Facts about the machine that choose and size a profile."""

    machine: str  # uname -m: aarch64, x86_64, ...
    model: str | None  # device-tree model, e.g. "Raspberry Pi 5 Model B Rev 1.0"
    compatible: tuple[str, ...]  # device-tree compatible entries
    l4t_release: str | None  # NVIDIA Linux for Tegra release, e.g. "36.4.0"
    cpu_count: int | None
    cpu_model: str | None
    mem_total_mb: int | None

    @property
    def is_jetson(self) -> bool:
        """Whether the board runs NVIDIA's Linux for Tegra."""
        return self.l4t_release is not None or any(
            c.startswith("nvidia,tegra") for c in self.compatible
        )


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _first(root: Path, rels: tuple[str, ...]) -> str | None:
    for rel in rels:
        text = _read(root, rel)
        if text is not None:
            return text
    return None


def _model(root: Path) -> str | None:
    text = _first(root, _MODEL_PATHS)
    if text is None:
        return None
    return text.strip("\x00\n ") or None


def _compatible(root: Path) -> tuple[str, ...]:
    text = _first(root, _COMPATIBLE_PATHS) or ""
    return tuple(item.strip() for item in text.split("\x00") if item.strip())


def _l4t_release(root: Path) -> str | None:
    text = _read(root, "etc/nv_tegra_release")
    if text is None:
        return None
    found = _L4T.search(text)
    return f"{found.group(1)}.{found.group(2)}" if found else "unknown"


def _cpuinfo_fields(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


def _cpu(root: Path) -> tuple[int | None, str | None, str | None]:
    """Return (cpu count, cpu model, machine guessed from cpuinfo)."""
    pairs = _cpuinfo_fields(_read(root, "proc/cpuinfo") or "")
    count = sum(1 for key, _ in pairs if key == "processor") or None
    names = [v for k, v in pairs if k in ("model name", "Model", "Hardware") and v]
    arch = None
    if any(k == "CPU architecture" and v == "8" for k, v in pairs):
        arch = "aarch64"
    elif any(k == "flags" and " lm " in f" {v} " for k, v in pairs):
        arch = "x86_64"
    return count, (names[0] if names else None), arch


def _mem_total_mb(root: Path) -> int | None:
    for line in (_read(root, "proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) // 1024
    return None


def _machine(root: Path, guessed: str | None) -> str:
    text = _read(root, "proc/sys/kernel/arch")
    if text and text.strip():
        return text.strip()
    if root.resolve() == Path("/").resolve() or guessed is None:
        return platform.machine()
    return guessed


def probe(root: Path = Path("/")) -> BoardInfo:
    """Read the board's facts from ``root`` (``/`` on a real board)."""
    count, cpu_model, guessed = _cpu(root)
    if root.resolve() == Path("/").resolve():
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else count
    return BoardInfo(
        machine=_machine(root, guessed),
        model=_model(root),
        compatible=_compatible(root),
        l4t_release=_l4t_release(root),
        cpu_count=count,
        cpu_model=cpu_model,
        mem_total_mb=_mem_total_mb(root),
    )
