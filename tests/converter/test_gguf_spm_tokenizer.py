"""SentencePiece-family GGUF vocabularies rebuilt as tokenizer.json, checked against sentencepiece.

Each style's model is trained here, its vocabulary written into a GGUF the way llama.cpp's
converter writes it, and the tokenizer rebuilt from that GGUF alone, through the checks
that conversion runs. The reference is sentencepiece itself: on the whole text where the
text holds no token that llama.cpp matches whole, and otherwise stretch by stretch between
those tokens, which is how llama.cpp runs a GGUF (each stretch gets the dummy prefix).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from converters.errors import CorruptSource, UnsupportedTokenizer
from converters.sources.gguf_meta import (
    TOKEN_CONTROL,
    TOKEN_UNKNOWN,
    TOKEN_USER_DEFINED,
    GGUFMeta,
    read_gguf,
)
from converters.sources.gguf_tokenizer import check_tokenizer, write_tokenizer
from converters.sources.spm_reference import SpmReference
from converters.sources.spm_vocab import SpmVocab
from tests.converter.test_cli_errors import assert_nothing_valid, assert_one_error, convert_cli
from tests.fixtures.spm_gguf import (
    GEMMA_STYLE,
    LLAMA2_STYLE,
    SPACE_MARK,
    SpmStyle,
    train_spm,
    write_spm_gguf,
)

STRINGS = (
    "Hello, world!",
    "Crème brûlée, naïve façade, Größe, smørrebrød, São Paulo",
    "Ελληνικά и русский текст",
    "你好，世界。今天天气很好。",  # noqa: RUF001
    "日本語のテキスト、한국어 문장",
    "Emoji 🙂🚀 ✅ 👩‍💻 🇫🇷 ∑ €",
    "Digits 0 42 123 2024-06-01 3.14159 1,000,000",
    "  two leading spaces",
    "trailing spaces   ",
    "runs  of   spaces    and        eight         nine",
    "tabs\tone\t\ttwo\t\t\tthree\t\t\t\tfour",
    "lines\none\n\ntwo\n\n\nthree\n\n\n\n\nfive\r\nwindows",
    "mixed \t \n  \n\t\t  whitespace",
    "def add(a, b):\n    return a + b  # sum\n\n\nclass Point:\n\tx = 1\n",
    '{"key": [1, 2, 3], "url": "https://example.org/?q=a&b=c"}',
    "cells <table><tr><td>one</td></tr></table> end",
    "a [multimodal] tag and a<br>break",
    "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n",
    "[INST] What is 2 + 2? [/INST] Four.",
    "<unk> <mask> and <unused0> markers",
    "x",
    " ",
    "",
)
ALL_WHOLE = (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN)


@dataclass(frozen=True)
class Built:
    """A trained model, its GGUF's metadata and the tokenizer rebuilt from that GGUF."""

    style: SpmStyle
    sp: Any  # sentencepiece.SentencePieceProcessor
    meta: GGUFMeta
    path: Path
    tok: Any  # tokenizers.Tokenizer
    whole: dict[str, int]  # tokens llama.cpp matches whole in raw text -> id

    def ids(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def holds(self, text: str, types: tuple[int, ...] = ALL_WHOLE) -> bool:
        """Whether ``text`` holds a token matched whole of one of ``types``."""
        kinds = self.meta.get("tokenizer.ggml.token_type")
        return any(tok in text for tok, i in self.whole.items() if kinds[i] in types)


@pytest.fixture(scope="module", params=[GEMMA_STYLE, LLAMA2_STYLE], ids=lambda s: s.name)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(request.param, tmp_path_factory.mktemp(request.param.name))


def build(style: SpmStyle, folder: Path, name: str = "") -> Built:
    """Train, write the GGUF, and rebuild its tokenizer into ``folder``."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    proto = train_spm(style)
    meta = read_gguf(write_spm_gguf(folder / "vocab.gguf", proto, style, name))
    write_tokenizer(meta, folder, add_bos=True)  # what conversion runs, checks included
    vocab = SpmVocab.from_meta(meta)
    return Built(
        style=style,
        sp=spm.SentencePieceProcessor(model_proto=proto),
        meta=meta,
        path=folder / "tokenizer.json",
        tok=Tokenizer.from_file(str(folder / "tokenizer.json")),
        whole={vocab.tokens[i]: i for i in vocab.whole_ids},
    )


def reference_ids(built: Built, text: str) -> list[int]:
    """sentencepiece on each stretch of text between the tokens matched whole."""
    tokens = sorted(built.whole, key=len, reverse=True)
    pattern = "(" + "|".join(re.escape(t) for t in tokens) + ")"
    ids: list[int] = []
    for part in re.split(pattern, text):
        if part in built.whole:
            ids.append(built.whole[part])
        elif part:
            ids.extend(built.sp.encode(part))
    return ids


def test_ids_equal_sentencepiece_on_every_string(built: Built) -> None:
    wrong = [(s, built.ids(s), reference_ids(built, s)) for s in STRINGS]
    assert [w for w in wrong if w[1] != w[2]] == []


def test_plain_text_is_split_as_sentencepiece_splits_the_whole_text(built: Built) -> None:
    # In Gemma's style user-defined tokens are SentencePiece's own symbols, so text holding
    # them is plain too; llama.cpp's prefix after a matched token differs from sentencepiece
    # only where there is a dummy prefix.
    kinds = (TOKEN_CONTROL, TOKEN_UNKNOWN) if built.style is GEMMA_STYLE else ALL_WHOLE
    plain = [s for s in STRINGS if not built.holds(s, kinds)]
    assert len(plain) >= 15
    wrong = [(s, built.ids(s), built.sp.encode(s)) for s in plain]
    assert [w for w in wrong if w[1] != w[2]] == []


def test_decoding_gives_the_text_back(built: Built) -> None:
    if built.style is GEMMA_STYLE:
        texts = list(STRINGS)
    else:  # llama.cpp prefixes a space after each token matched whole: that does not undo
        texts = [s for s in STRINGS if not built.holds(s)]
    decoded = [built.tok.decode(built.ids(s), skip_special_tokens=False) for s in texts]
    assert [(s, d) for s, d in zip(texts, decoded, strict=True) if s != d] == []


def test_prefix_space_follows_the_gguf(built: Built) -> None:
    first = built.tok.encode("Hello", add_special_tokens=False).tokens[0]
    assert first.startswith(SPACE_MARK) == built.style.add_dummy_prefix
    assert built.tok.decode(built.ids("Hello")) == "Hello"


def test_whitespace_and_user_defined_tokens_are_one_token_each(built: Built) -> None:
    for piece in built.style.user_defined:
        text = piece.replace(SPACE_MARK, " ")
        assert built.ids(text) == [built.sp.piece_to_id(piece)], repr(text)
    if built.style is GEMMA_STYLE:  # the issue: Gemma's "  " encoded to an id past the vocabulary
        assert built.ids("a  b") == [built.sp.piece_to_id(p) for p in ("a", "▁▁", "b")]
        kept = built.tok.decode(built.ids("x\n\n<table>  y\t"), skip_special_tokens=True)
        assert kept == "x\n\n<table>  y\t"


def test_control_tokens_are_special_and_ids_follow_the_gguf(built: Built) -> None:
    style, tok = built.style, built.tok
    after = " b" if style.add_dummy_prefix else "b"  # llama.cpp's prefix after the token
    for piece in style.control:
        assert built.ids(piece) == [built.sp.piece_to_id(piece)]
        assert tok.decode(built.ids(f"a{piece}b")) == f"a{after}"  # special: left out
    assert tok.token_to_id(built.sp.id_to_piece(style.bos_id)) == style.bos_id
    assert tok.token_to_id(built.sp.id_to_piece(style.eos_id)) == style.eos_id
    assert tok.token_to_id(built.sp.id_to_piece(style.unk_id)) == style.unk_id
    with_marks = tok.encode("Hello").ids
    assert with_marks == [style.bos_id, *built.ids("Hello")]  # add_bos, no add_eos


def test_reference_encoder_of_the_conversion_check_equals_sentencepiece(built: Built) -> None:
    reference = SpmReference(SpmVocab.from_meta(built.meta))
    wrong = [(s, reference.encode(s), reference_ids(built, s)) for s in STRINGS]
    assert [w for w in wrong if w[1] != w[2]] == []


def test_a_tokenizer_that_splits_differently_is_refused(built: Built, tmp_path: Path) -> None:
    doc = json.loads(built.path.read_text(encoding="utf-8"))
    doc["model"]["merges"].reverse()  # longest pieces first: words split differently
    broken = tmp_path / "tokenizer.json"
    broken.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(CorruptSource, match="SentencePiece tokenization gives"):
        check_tokenizer(broken, built.meta)


def test_phi3_drops_the_whitespace_after_its_tokens_as_llama_cpp_does(tmp_path: Path) -> None:
    text = "[INST]\n What is 2 + 2? [/INST]  Four.<br> x"
    stripped = "[INST]What is 2 + 2? [/INST]Four.<br>x"
    phi3 = build(LLAMA2_STYLE, tmp_path, name="Phi-3 Mini 4k Instruct")
    assert phi3.ids(text) == reference_ids(phi3, stripped)
    other = build(LLAMA2_STYLE, tmp_path, name="Llama 2 7B")
    assert other.ids(text) == reference_ids(other, text) != reference_ids(other, stripped)


def _meta(fields: dict[str, Any]) -> GGUFMeta:
    return GGUFMeta(path=Path("vocab.gguf"), fields=fields)


def test_a_vocabulary_listing_a_piece_twice_is_refused(built: Built, tmp_path: Path) -> None:
    tokens = list(built.meta.get("tokenizer.ggml.tokens"))
    tokens[-1] = tokens[-2]
    meta = _meta({**built.meta.fields, "tokenizer.ggml.tokens": tokens})
    with pytest.raises(CorruptSource, match="twice"):
        write_tokenizer(meta, tmp_path, add_bos=True)
    assert not (tmp_path / "tokenizer.json").exists()


@pytest.mark.parametrize("model", ["t5", "bert", None])
def test_an_unsupported_tokenizer_model_is_refused(model: str | None, tmp_path: Path) -> None:
    fields = {"tokenizer.ggml.tokens": ["<unk>", "a"], "tokenizer.ggml.model": model}
    with pytest.raises(UnsupportedTokenizer, match=r"gpt2 .*llama") as raised:
        write_tokenizer(_meta(fields), tmp_path, add_bos=False)
    assert (repr(model) if model else "no tokenizer") in str(raised.value)


def test_convert_refuses_an_unsupported_tokenizer_at_once(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    src = tmp_path / "wordpiece.gguf"
    writer = GGUFWriter(str(src), "llama")
    writer.add_tokenizer_model("bert")
    writer.add_token_list(["[PAD]", "[UNK]", "hello"])
    writer.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "bundle"
    result = convert_cli(src, "-o", out, timeout=120)
    assert_one_error(result, "wordpiece.gguf", "'bert' tokenizer", "gpt2", "llama")
    assert_nothing_valid(out)
