"""The bundle's tokenizer.json: merges as strings where they can be, the same tokens always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converters.tokenizer_file import write_tokenizer
from tests.fixtures.tiny_models import TRAINING_TEXT, build_tokenizer

pytest.importorskip("tokenizers")
PROBE = "\n".join(TRAINING_TEXT)
TEXTS = [*TRAINING_TEXT, "Unseen words: zymurgy, quixotic 42 ✅ ünïcödé\tend"]


@pytest.fixture
def pair_form(tmp_path: Path) -> Path:
    """A trained byte-level BPE tokenizer.json whose merges are pairs (what tokenizers saves)."""
    build_tokenizer(tmp_path)
    path = tmp_path / "tokenizer.json"
    merges = json.loads(path.read_text(encoding="utf-8"))["model"]["merges"]
    assert isinstance(merges[0], list)
    return path


def _ids(path: Path) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return [tokenizer.encode(text).ids for text in TEXTS]


def test_pairs_become_strings_and_tokenize_the_same(pair_form: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle-tokenizer.json"
    assert write_tokenizer(pair_form, out, PROBE)
    merges = json.loads(out.read_text(encoding="utf-8"))["model"]["merges"]
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    assert _ids(out) == _ids(pair_form)


def test_a_merge_with_a_space_keeps_the_file_as_it_is(pair_form: Path, tmp_path: Path) -> None:
    data = json.loads(pair_form.read_text(encoding="utf-8"))
    data["model"]["merges"][-1] = ["a b", "c"]  # no string form: "a b c" would split wrongly
    source = tmp_path / "spaced.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out.json"
    assert not write_tokenizer(source, out, PROBE)
    assert out.read_bytes() == source.read_bytes()


def test_a_tokenizer_without_merges_is_copied(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    source = tmp_path / "words.json"
    tokenizer.save(str(source))
    out = tmp_path / "out.json"
    assert not write_tokenizer(source, out, "hello world")
    assert out.read_bytes() == source.read_bytes()
