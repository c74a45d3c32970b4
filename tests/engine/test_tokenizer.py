"""Incremental detokenizing never yields half a character (Chinese, emoji) and loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.engine.tokenizer import Tokenizer
from tests.fixtures.tiny_models import build_tokenizer

TEXTS = [
    "骆驼穿过沙漠、熊猫在竹林里睡觉。",
    "Emoji: 🙂 🚀 ✅ 😀🎉👩‍👩‍👧 and café, naïve, Größe.",
    "陌生的汉字和🦜鹦鹉 mixed with text",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder: Path = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return Tokenizer(folder / "tokenizer.json")


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_are_whole_characters_and_join_to_the_text(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    detok = tokenizer.detokenizer()
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    # The test means something only if some character really was split across tokens.
    assert any(p == "" for p in pieces[:-1])


def test_prompt_context_keeps_the_first_space(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("Sensors report")
    answer = tokenizer.encode(" temperature 🙂")
    detok = tokenizer.detokenizer(prompt)
    assert "".join(detok.push(i) for i in answer) + detok.flush() == " temperature 🙂"


def test_a_character_cut_off_at_the_end_is_dropped(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 🦜")
    detok = tokenizer.detokenizer()
    shown = "".join(detok.push(i) for i in ids[:-1]) + detok.flush()
    assert shown == "ok "


def test_invalid_bytes_do_not_stall_the_stream(tokenizer: Tokenizer) -> None:
    # Lone continuation bytes can never complete a character.
    stray = tokenizer.encode("🦜")[-1]
    detok = tokenizer.detokenizer()
    pieces = [detok.push(stray) for _ in range(6)]
    assert any(pieces)
