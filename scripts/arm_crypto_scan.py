"""List the aarch64 binaries that hold Armv8 crypto instructions (AES, 64-bit PMULL, SHA1/SHA2).

qemu's cortex-a72 model has the crypto extension and the Raspberry Pi 4's BCM2711 does not,
so an emulated run cannot catch a binary that executes these without checking HWCAP first.
This finds where such instructions are at all, and which of those binaries a generation
loads (``--loaded``: a file of paths, one per line, e.g. from the guest's /proc/self/maps),
so that what the emulation cannot vouch for is known by name.

Usage: python scripts/arm_crypto_scan.py [--loaded FILE] FOLDER...
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

EM_AARCH64 = 183
SHT_PROGBITS = 1
SHF_EXECINSTR = 0x4
# (mask, value) of each instruction's fixed bits (Arm A64 encoding; registers masked out).
PATTERNS: dict[str, tuple[int, int]] = {
    "aese": (0xFFFFFC00, 0x4E284800),
    "aesd": (0xFFFFFC00, 0x4E285800),
    "aesmc": (0xFFFFFC00, 0x4E286800),
    "aesimc": (0xFFFFFC00, 0x4E287800),
    "pmull.1q": (0xBFE0FC00, 0x0EE0E000),  # the 64-bit form; the 8-bit one is plain SIMD
    "sha1h": (0xFFFFFC00, 0x5E280800),
    "sha1su1": (0xFFFFFC00, 0x5E281800),
    "sha256su0": (0xFFFFFC00, 0x5E282800),
    **{name: (0xFFE0FC00, 0x5E000000 | (i << 12)) for i, name in enumerate(
        ("sha1c", "sha1p", "sha1m", "sha1su0", "sha256h", "sha256h2", "sha256su1"))},
}


def crypto_instructions(path: Path) -> dict[str, int]:
    """Return how many of each crypto instruction ``path``'s code sections hold ({} if none
    or if it is not an aarch64 ELF file)."""
    data = path.read_bytes()
    if len(data) < 64 or data[:5] != b"\x7fELF\x02" or struct.unpack_from("<H", data, 18)[0] != (
        EM_AARCH64
    ):
        return {}
    (section_table,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    found: dict[str, int] = {}
    for i in range(count):
        _, kind, flags, _, offset, size = struct.unpack_from(
            "<IIQQQQ", data, section_table + i * entry_size)
        if kind != SHT_PROGBITS or not flags & SHF_EXECINSTR:
            continue
        words = np.frombuffer(data, dtype="<u4", count=size // 4, offset=offset)
        for name, (mask, value) in PATTERNS.items():
            hits = int(np.count_nonzero((words & mask) == value))
            if hits:
                found[name] = found.get(name, 0) + hits
    return found


def shared_objects(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.so*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--loaded", type=Path, help="paths a generation mapped, one per line")
    args = parser.parse_args(argv)
    loaded = set()
    if args.loaded is not None:
        loaded = {Path(line).resolve() for line in args.loaded.read_text().split()}
    rows = []
    for folder in args.folders:
        for path in shared_objects(folder):
            found = crypto_instructions(path)
            if found:
                rows.append((path, found))
    if not rows:
        print("no aarch64 crypto instructions in any shared object")
        return 0
    for path, found in rows:
        counts = " ".join(f"{name} {n}" for name, n in found.items())
        mark = ""
        if args.loaded is not None:
            mark = "  loaded by a generation" if path.resolve() in loaded else "  not loaded"
        print(f"{path}: {counts}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
