"""Device profiles (one TOML per board) and detection of the board the runtime is on.

Pure Python with no third-party dependencies, so it can run anywhere the daemon runs.

    >>> import devices
    >>> devices.load_profile("raspberry-pi-5").threads
    4
"""

from devices.board import BoardInfo, probe
from devices.catalog import choose, detect, fit_to_memory, list_profiles, load_profile
from devices.profile import KNOWN_PROVIDERS, MEMORY_LEVERS, Profile, ProfileError

__all__ = [
    "KNOWN_PROVIDERS",
    "MEMORY_LEVERS",
    "BoardInfo",
    "Profile",
    "ProfileError",
    "choose",
    "detect",
    "fit_to_memory",
    "list_profiles",
    "load_profile",
    "probe",
]
