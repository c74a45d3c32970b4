"""scripts/arm_crypto_scan.py finds the crypto instructions the Pi 4 lacks, and only those."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "arm_crypto_scan.py"
NOP = 0xD503201F
AESE_V0_V1 = 0x4E284820
PMULL_64 = 0x0EE1E020  # pmull v0.1q, v1.1d, v1.1d: crypto extension
PMULL2_64 = 0x4EE1E020
PMULL_8 = 0x0E21E020  # pmull v0.8h, v1.8b, v1.8b: plain SIMD, every Armv8 core has it
SHA256H = 0x5E024020


@pytest.fixture(scope="module")
def scan() -> ModuleType:
    spec = importlib.util.spec_from_file_location("arm_crypto_scan", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def elf(path: Path, code: list[int], *, machine: int = 183, executable: bool = True) -> Path:
    """Write a minimal ELF64 file: a null section and one section holding ``code``."""
    text = struct.pack(f"<{len(code)}I", *code)
    header_size, entry_size = 64, 64
    table = header_size + len(text)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 3, machine, 1, 0, 0, table, 0, header_size, 0, 0, entry_size, 2, 0)
    flags = 0x6 if executable else 0x2
    sections = b"\0" * entry_size + struct.pack(
        "<IIQQQQIIQQ", 0, 1, flags, 0, header_size, len(text), 0, 0, 4, 0)
    path.write_bytes(header + text + sections)
    return path


def test_crypto_instructions_are_counted_and_plain_simd_is_not(
    scan: ModuleType, tmp_path: Path
) -> None:
    lib = elf(tmp_path / "libx.so", [NOP, AESE_V0_V1, PMULL_64, PMULL2_64, PMULL_8, SHA256H, NOP])
    assert scan.crypto_instructions(lib) == {"aese": 1, "pmull.1q": 2, "sha256h": 1}


def test_data_sections_and_other_machines_are_not_read(scan: ModuleType, tmp_path: Path) -> None:
    assert scan.crypto_instructions(elf(tmp_path / "data.so", [AESE_V0_V1], executable=False)) == {}
    assert scan.crypto_instructions(elf(tmp_path / "x86.so", [AESE_V0_V1], machine=62)) == {}
    (tmp_path / "text.so").write_text("not an ELF file")
    assert scan.crypto_instructions(tmp_path / "text.so") == {}


def test_the_report_says_which_holders_a_generation_loaded(
    scan: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    used = elf(tmp_path / "libused.so.1", [AESE_V0_V1])
    elf(tmp_path / "libidle.so", [SHA256H])
    elf(tmp_path / "libclean.so", [NOP, PMULL_8])
    loaded = tmp_path / "mapped.txt"
    loaded.write_text(f"{used}\n{tmp_path / 'libclean.so'}\n")
    assert scan.main(["--loaded", str(loaded), str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{tmp_path / 'libidle.so'}: sha256h 1  not loaded",
                     f"{used}: aese 1  loaded by a generation"]
