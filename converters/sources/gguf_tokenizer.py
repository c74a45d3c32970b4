"""Build ``tokenizer.json`` from a GGUF's own tokenizer fields, and check it against them.

transformers' GGUF tokenizer conversion has been seen wrong (eos, add_bos, special tokens,
a SentencePiece decoder on a byte-level BPE, Gemma's user-defined whitespace tokens), so
the tokenizer is built here directly from ``tokenizer.ggml.*``: byte-level BPE ("gpt2")
vocabularies below, SentencePiece-family ("llama") ones in ``spm_tokenizer``. Other kinds
are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converters.errors import CorruptSource, UnsupportedTokenizer
from converters.sources.gguf_meta import TOKEN_CONTROL, TOKEN_USER_DEFINED, GGUFMeta
from converters.sources.spm_reference import PROBE_TEXTS, SpmReference, token_probes
from converters.sources.spm_tokenizer import spm_tokenizer_json
from converters.sources.spm_vocab import SpmVocab

# tokenizer.ggml.model values this module rebuilds, with what they are.
SUPPORTED_MODELS = {"gpt2": "byte-level BPE", "llama": "SentencePiece"}

# Pre-tokenizer split patterns by tokenizer.ggml.pre (the ones llama.cpp documents).
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PATTERNS = {"qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "llama-bpe": _LLAMA3}


def _pre_tokenizer(pre: str) -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False}
    if pre == "smollm":
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {**byte_level, "use_regex": True},
            ],
        }
    if pre in SPLIT_PATTERNS:
        split = {
            "type": "Split",
            "pattern": {"Regex": SPLIT_PATTERNS[pre]},
            "behavior": "Isolated",
            "invert": False,
        }
        return {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}
    return {**byte_level, "use_regex": True}


def special_token_ids(meta: GGUFMeta) -> list[int]:
    """Ids of control and user-defined tokens: these must match as whole special tokens."""
    types = list(meta.get("tokenizer.ggml.token_type", []))
    return [i for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]


def _post_processor(bos: str | None) -> dict[str, Any] | None:
    if bos is None:
        return None
    return {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [], "tokens": [bos]}},
    }


def _added_tokens(tokens: list[str], ids: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in ids
    ]


def bpe_tokenizer_json(meta: GGUFMeta, add_bos: bool) -> dict[str, Any]:
    """Return a tokenizer.json document for a byte-level BPE ("gpt2") GGUF vocabulary."""
    tokens = [str(t) for t in meta.get("tokenizer.ggml.tokens", [])]
    merges = [str(m) for m in meta.get("tokenizer.ggml.merges", [])]
    if not tokens or not merges:
        raise CorruptSource(f"{meta.path}: GGUF has no BPE vocabulary or merges")
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    bos = tokens[int(bos_id)] if add_bos and bos_id is not None else None
    post = _post_processor(bos)
    if post is not None and bos is not None:
        post["special_tokens"][bos]["ids"] = [int(bos_id)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tokens, special_token_ids(meta)),
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default"))),
        "post_processor": post,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


def check_tokenizer_model(meta: GGUFMeta) -> str:
    """Return the GGUF's tokenizer model, or raise if this module cannot rebuild it."""
    model = meta.get("tokenizer.ggml.model")
    if model in SUPPORTED_MODELS:
        return str(model)
    known = ", ".join(f"{name} ({kind})" for name, kind in SUPPORTED_MODELS.items())
    what = "has no tokenizer" if model is None else f"has a {model!r} tokenizer"
    raise UnsupportedTokenizer(
        f"{meta.path}: GGUF {what} (tokenizer.ggml.model); the converter rebuilds {known}"
    )


def _whole_token_ids(meta: GGUFMeta) -> list[int]:
    if meta.get("tokenizer.ggml.model") == "llama":
        return SpmVocab.from_meta(meta).whole_ids
    return special_token_ids(meta)


def _check_whole_tokens(tok: Any, meta: GGUFMeta) -> None:
    tokens = [str(t) for t in meta.get("tokenizer.ggml.tokens", [])]
    ids = _whole_token_ids(meta)
    encoded = tok.encode_batch([tokens[i] for i in ids], add_special_tokens=False)
    for i, encoding in zip(ids, encoded, strict=True):
        if encoding.ids != [i]:
            raise CorruptSource(
                f"{meta.path}: special token {tokens[i]!r} encodes to {encoding.ids}, not [{i}]"
            )


def _check_against_reference(tok: Any, meta: GGUFMeta) -> None:
    vocab = SpmVocab.from_meta(meta)
    reference = SpmReference(vocab)
    for text in (*PROBE_TEXTS, *token_probes(vocab)):
        got = tok.encode(text, add_special_tokens=False).ids
        want = reference.encode(text)
        if got != want:
            raise CorruptSource(
                f"{meta.path}: rebuilt tokenizer splits {text!r} into {got}; "
                f"the GGUF's own SentencePiece tokenization gives {want}"
            )


def check_tokenizer(path: Path, meta: GGUFMeta) -> None:
    """Raise unless special tokens encode whole, text round-trips, and ids match the GGUF's."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    _check_whole_tokens(tok, meta)
    sample = "Hello, world! 12345\n  indented\tcafé 🙂"
    ids = tok.encode(sample, add_special_tokens=False).ids
    if tok.decode(ids) != sample:
        raise CorruptSource(f"{meta.path}: built tokenizer does not round-trip text")
    if meta.get("tokenizer.ggml.model") == "llama":
        _check_against_reference(tok, meta)


def write_tokenizer(meta: GGUFMeta, out_dir: Path, add_bos: bool) -> None:
    """Write tokenizer.json built from the GGUF's fields, and check it against them."""
    if check_tokenizer_model(meta) == "gpt2":
        doc = bpe_tokenizer_json(meta, add_bos)
    else:
        doc = spm_tokenizer_json(meta, add_bos)
    path = out_dir / "tokenizer.json"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    check_tokenizer(path, meta)
