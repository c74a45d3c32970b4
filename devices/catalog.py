"""Load the profiles shipped in devices/profiles/ and pick one for a board."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

from devices.board import BoardInfo, probe
from devices.profile import PROFILE_DIR, Profile, ProfileError, profile_from_toml

# Above this share of the board's memory, detection shrinks the profile's limits.
_MAX_SHARE = 0.85
_HIGH_SHARE = 0.75
_BUDGET_SHARE = 0.60


@cache
def _catalog() -> dict[str, Profile]:
    return {path.stem: profile_from_toml(path) for path in sorted(PROFILE_DIR.glob("*.toml"))}


def list_profiles() -> list[str]:
    """Return the names of the shipped profiles, sorted."""
    return sorted(_catalog())


def load_profile(name: str) -> Profile:
    """Return the shipped profile called ``name``; raise ProfileError naming the known ones."""
    try:
        return _catalog()[name]
    except KeyError:
        raise ProfileError(
            f"unknown device profile {name!r}; known: {', '.join(list_profiles())}"
        ) from None


def _board_profile(board: BoardInfo) -> Profile | None:
    for profile in _catalog().values():
        rules = profile.match
        if any(c.startswith(prefix) for prefix in rules.compatible for c in board.compatible):
            return profile
        if board.model and any(text in board.model for text in rules.model):
            return profile
    return None


def choose(board: BoardInfo) -> Profile:
    """Return the profile for ``board``: a board match, else the generic one for its arch."""
    found = _board_profile(board)
    if found is None:
        generic = [p for p in _catalog().values() if board.machine in p.match.arch]
        if not generic:
            raise ProfileError(
                f"no device profile for machine {board.machine!r}; "
                f"name one of {', '.join(list_profiles())} in the config"
            )
        found = generic[0]
    return fit_to_memory(found, board.mem_total_mb)


def fit_to_memory(profile: Profile, mem_total_mb: int | None) -> Profile:
    """Shrink the memory limits when the board has less memory than the profile assumes."""
    if not mem_total_mb or profile.memory_max_mb <= mem_total_mb * _MAX_SHARE:
        return profile
    return dataclasses.replace(
        profile,
        memory_budget_mb=max(1, int(mem_total_mb * _BUDGET_SHARE)),
        memory_high_mb=max(1, int(mem_total_mb * _HIGH_SHARE)),
        memory_max_mb=max(1, int(mem_total_mb * _MAX_SHARE)),
        prefix_cache_mb=min(profile.prefix_cache_mb, int(mem_total_mb * _BUDGET_SHARE) // 16),
    )


def detect(root: Path = Path("/")) -> Profile:
    """Return the profile for the machine whose files are under ``root``."""
    return choose(probe(root))
