"""Build ``tokenizer.json`` for a SentencePiece-family ("llama") GGUF vocabulary.

The ``tokenizers`` library runs the GGUF's own tokenization (see ``spm_reference``) as:

- added tokens, not normalized, for every control, user-defined and unknown token, so each
  is matched whole in the raw text as the vocabulary writes it (Gemma's user-defined runs
  of spaces, tabs and newlines are literal there); control and unknown tokens are special,
  user-defined ones are text and stay in decoded output; for Phi-3 they take the whitespace
  after them along, as llama.cpp's rule for that model name does;
- a normalizer that writes spaces as "▁", after a "▁" prefix when ``add_space_prefix`` is
  set (Llama 2, Mistral; not Gemma). It runs on each stretch of text between added tokens,
  so the prefix comes at the start and after every added token, as in llama.cpp;
- a BPE model whose merges are every split of a normal piece into two normal pieces, ranked
  by the merged piece's score (highest first), with ``<0xXX>`` byte fallback;
- a decoder that turns "▁" back into spaces, joins byte pieces, and drops the prefix space.
"""

from __future__ import annotations

from typing import Any

from converters.sources.gguf_meta import TOKEN_CONTROL, TOKEN_UNKNOWN, GGUFMeta
from converters.sources.spm_vocab import SPACE_MARK, SpmVocab


def spm_merges(vocab: SpmVocab) -> list[list[str]]:
    """Return the BPE merges that reproduce score-ordered SentencePiece merging."""
    scores = vocab.normal_scores
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, score in scores.items():
        piece_id = vocab.ids[piece]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in scores and right in scores:
                ranked.append((-score, piece_id, cut, left, right))
    ranked.sort()
    return [[left, right] for _, _, _, left, right in ranked]


def _added_tokens(vocab: SpmVocab) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "content": vocab.tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": i in vocab.rstrip_ids,
            "normalized": False,
            "special": vocab.types[i] in (TOKEN_CONTROL, TOKEN_UNKNOWN),
        }
        for i in vocab.whole_ids
    ]


def _normalizer(add_space_prefix: bool) -> dict[str, Any]:
    spaces = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK}
    if not add_space_prefix:
        return spaces
    prefix = {"type": "Prepend", "prepend": SPACE_MARK}
    return {"type": "Sequence", "normalizers": [prefix, spaces]}


def _decoder(add_space_prefix: bool) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if add_space_prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _post_processor(vocab: SpmVocab, bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """BOS before and EOS after the text, as the GGUF asks (add_bos/add_eos)."""

    def marks(token_id: int | None, type_id: int) -> list[dict[str, Any]]:
        if token_id is None:
            return []
        return [{"SpecialToken": {"id": vocab.tokens[token_id], "type_id": type_id}}]

    def sequence(name: str, type_id: int) -> list[dict[str, Any]]:
        return [*marks(bos_id, type_id), {"Sequence": {"id": name, "type_id": type_id}}]

    eos = marks(eos_id, 0)
    used = [i for i in (bos_id, eos_id) if i is not None]
    return {
        "type": "TemplateProcessing",
        "single": [*sequence("A", 0), *eos],
        "pair": [*sequence("A", 0), *eos, *sequence("B", 1), *marks(eos_id, 1)],
        "special_tokens": {
            vocab.tokens[i]: {"id": vocab.tokens[i], "ids": [i], "tokens": [vocab.tokens[i]]}
            for i in used
        },
    }


def _special_id(meta: GGUFMeta, vocab: SpmVocab, key: str, wanted: bool) -> int | None:
    value = meta.get(f"tokenizer.ggml.{key}_token_id")
    if not wanted or value is None or not 0 <= int(value) < len(vocab.tokens):
        return None
    return int(value)


def spm_tokenizer_json(meta: GGUFMeta, add_bos: bool) -> dict[str, Any]:
    """Return a tokenizer.json document for a SentencePiece-family GGUF vocabulary."""
    vocab = SpmVocab.from_meta(meta)
    bos_id = _special_id(meta, vocab, "bos", add_bos)
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    eos_id = _special_id(meta, vocab, "eos", add_eos)
    has_marks = bos_id is not None or eos_id is not None
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(vocab),
        "normalizer": _normalizer(vocab.add_space_prefix),
        "pre_tokenizer": None,
        "post_processor": _post_processor(vocab, bos_id, eos_id) if has_marks else None,
        "decoder": _decoder(vocab.add_space_prefix),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": vocab.byte_fallback,
            "ignore_merges": False,
            "vocab": vocab.ids,
            "merges": spm_merges(vocab),
        },
    }
