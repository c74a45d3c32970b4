"""Every fast-path family converted from a GGUF written here as llama.cpp lays one out: the
bundle computes what transformers computes on the model the GGUF was written from, and its
tokenizer, rebuilt from the GGUF's own fields, gives the HF tokenizer's ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle import read_manifest
from edge_runtime.engine import EngineOptions, load_engine
from tests.fixtures import tiny_families
from tests.fixtures.tiny_families import FAMILIES, build_gguf_source_model, write_family_gguf

family_reference = tiny_families.family_reference

PROMPT = "Field devices answer questions offline over MQTT, every minute."
TEXTS = [
    "café, naïve, Größe",
    "你好，世界。",  # noqa: RUF001
    "Emoji: 🙂 🚀 ✅",
    "two  spaces,   three,\tand a tab\n\nnew lines",
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nhi<|im_end|>\n",
]


@pytest.fixture(scope="session")
def family_gguf(converter_cache: Path) -> Callable[[str], tuple[Path, Path]]:
    """Return a factory: ``family_gguf(family)`` -> (the HF folder, the GGUF written from it)."""

    def make(family: str) -> tuple[Path, Path]:
        hf = converter_cache / f"hf-family-gguf-{family}"
        if not (hf / "config.json").is_file():
            build_gguf_source_model(hf, family)
        path = converter_cache / f"tiny-{family}.gguf"
        if not path.is_file():
            write_family_gguf(hf, path, family)
        return hf, path

    return make


@pytest.fixture(scope="session")
def gguf_bundle(
    converter_cache: Path, family_gguf: Callable[[str], tuple[Path, Path]]
) -> Callable[[str], Path]:
    """Return a factory: ``gguf_bundle(family)`` -> the fp32 bundle converted from its GGUF."""

    def make(family: str) -> Path:
        out = converter_cache / f"bundle-family-gguf-{family}"
        if not (out / "manifest.json").is_file():
            from converters import ConvertOptions, convert

            convert(family_gguf(family)[1], out, ConvertOptions(quant="fp32", overwrite=True))
        return out

    return make


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_source_computes_what_transformers_computes(
    family: str,
    family_gguf: Callable[[str], tuple[Path, Path]],
    gguf_bundle: Callable[[str], Path],
    family_reference: Callable[[Path], Any],
) -> None:
    import torch

    bundle = gguf_bundle(family)
    manifest = read_manifest(bundle)
    assert manifest.source.kind == "gguf" and manifest.graph.kind == "gqa"
    model = family_reference(family_gguf(family)[0])
    engine = load_engine(bundle, EngineOptions(provider="cpu", threads=1))
    ids = engine.tokenizer.encode(PROMPT)
    sequence = engine.single_sequence()
    sequence.reset(len(ids) + 3)
    logits = sequence.forward(np.asarray(ids))
    for _ in range(3):
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0, -1].numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
        ids.append(int(np.argmax(expected)))
        logits = sequence.forward(np.asarray(ids[-1:]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_tokenizer_gives_the_hf_tokenizer_ids(
    family: str,
    family_gguf: Callable[[str], tuple[Path, Path]],
    gguf_bundle: Callable[[str], Path],
) -> None:
    from tokenizers import Tokenizer

    rebuilt = Tokenizer.from_file(str(gguf_bundle(family) / "tokenizer.json"))
    original = Tokenizer.from_file(str(family_gguf(family)[0] / "tokenizer.json"))
    for text in TEXTS:
        assert rebuilt.encode(text).ids == original.encode(text).ids, text
        assert rebuilt.decode(original.encode(text).ids, skip_special_tokens=False) == text


def _write_gguf(path: Path, arch: str, fields: dict[str, Any]) -> Path:
    """A small GGUF of ``arch`` with the given ``{arch}.*`` fields and one tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in fields.items():
        if isinstance(value, str):
            writer.add_string(f"{arch}.{key}", value)
        else:
            writer.add_float32(f"{arch}.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_rope_scaling_the_loader_drops_is_refused(tmp_path: Path) -> None:
    from converters.errors import UnsupportedArchitecture
    from converters.sources.gguf_config import config_fixes
    from converters.sources.gguf_meta import read_gguf

    path = _write_gguf(tmp_path / "yarn.gguf", "llama",
                       {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0})
    with pytest.raises(UnsupportedArchitecture, match="yarn"):
        config_fixes(read_gguf(path))


def test_rope_freqs_that_are_not_llama3_scaling_are_refused(
    tmp_path: Path, family_gguf: Callable[[str], tuple[Path, Path]]
) -> None:
    import gguf

    from converters import ConvertOptions, convert
    from converters.errors import UnsupportedArchitecture

    reader = gguf.GGUFReader(str(family_gguf("llama3")[1]))
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    path = tmp_path / "odd.gguf"
    path.write_bytes(family_gguf("llama3")[1].read_bytes())
    with open(path, "r+b") as fh:  # a divisor out of llama3's shape, in place
        fh.seek(int(freqs.data_offset) + 3 * 4)
        fh.write(np.float32(3.0).tobytes())
    with pytest.raises(UnsupportedArchitecture, match="rope_freqs"):
        convert(path, tmp_path / "out", ConvertOptions(quant="fp32"))
    assert not (tmp_path / "out").exists()


def test_a_llama_gguf_named_mistral_is_refused_before_loading(tmp_path: Path) -> None:
    import gguf

    from converters.errors import UnsupportedArchitecture
    from converters.sources.gguf_config import config_fixes
    from converters.sources.gguf_meta import read_gguf

    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_name("mistral")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitecture, match=r"general\.name"):
        config_fixes(read_gguf(tmp_path / "m.gguf"))


def test_a_family_transformers_cannot_load_from_gguf_is_refused_by_name(tmp_path: Path) -> None:
    from converters import ConvertOptions, convert
    from converters.errors import UnsupportedArchitecture

    path = _write_gguf(tmp_path / "gemma1.gguf", "gemma", {"rope.freq_base": 10000.0})
    with pytest.raises(UnsupportedArchitecture, match="'gemma' cannot be loaded"):
        convert(path, tmp_path / "out", ConvertOptions(quant="fp32"))
