"""A SentencePiece-family ("llama") GGUF vocabulary: pieces, scores and token types."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from converters.errors import CorruptSource
from converters.sources.gguf_meta import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_USER_DEFINED,
    GGUFMeta,
)

SPACE_MARK = "\u2581"  # "▁", how SentencePiece writes a space inside its pieces
WHOLE_TYPES = (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN)
# llama.cpp drops the whitespace after every whole-matched token of a model whose name says
# Phi-3 (its tokenizer config strips it), except after these; and after "</s>" too.
RSTRIP_NAMES = ("phi-3", "phi3")
RSTRIP_KEPT = ("<unk>", "<s>", "<|endoftext|>")


def byte_piece(value: int) -> str:
    """Return the byte-fallback piece of one byte, as SentencePiece names it."""
    return f"<0x{value:02X}>"


@dataclass(frozen=True)
class SpmVocab:
    """The ``tokenizer.ggml.*`` vocabulary of a SentencePiece-family GGUF."""

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    unk_id: int | None
    add_space_prefix: bool
    rstrip: bool = False  # whole-matched tokens drop the whitespace after them (Phi-3)

    @classmethod
    def from_meta(cls, meta: GGUFMeta) -> SpmVocab:
        """Read the vocabulary, with llama.cpp's defaults for the fields a GGUF leaves out."""
        tokens = tuple(str(t) or f"[EMPTY_{i}]" for i, t in enumerate(_list(meta, "tokens")))
        if not tokens:
            raise CorruptSource(f"{meta.path}: GGUF has no SentencePiece vocabulary")
        scores = tuple(float(s) for s in _list(meta, "scores")) or (0.0,) * len(tokens)
        types = tuple(int(t) for t in _list(meta, "token_type")) or (TOKEN_NORMAL,) * len(tokens)
        if len(scores) != len(tokens) or len(types) != len(tokens):
            raise CorruptSource(
                f"{meta.path}: GGUF lists {len(tokens)} tokens but {len(scores)} scores "
                f"and {len(types)} token types"
            )
        _check_unique(meta, tokens)
        unk = meta.get("tokenizer.ggml.unknown_token_id", 0)
        return cls(
            tokens=tokens,
            scores=scores,
            types=types,
            unk_id=int(unk) if unk is not None and int(unk) < len(tokens) else None,
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            rstrip=any(n in str(meta.get("general.name", "")).lower() for n in RSTRIP_NAMES),
        )

    @cached_property
    def ids(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    @cached_property
    def normal_scores(self) -> dict[str, float]:
        """Score of each normal piece: the pieces that merging may form."""
        return {
            token: self.scores[i]
            for i, token in enumerate(self.tokens)
            if self.types[i] == TOKEN_NORMAL
        }

    @cached_property
    def whole_ids(self) -> list[int]:
        """Ids of the tokens matched whole in raw text: control, user-defined, unknown."""
        return [i for i, t in enumerate(self.types) if t in WHOLE_TYPES]

    @cached_property
    def rstrip_ids(self) -> frozenset[int]:
        """Ids of the whole-matched tokens that drop the whitespace after them."""
        if not self.rstrip:
            return frozenset()
        kept = {self.ids[t] for t in RSTRIP_KEPT if t in self.ids}
        return frozenset(self.whole_ids) - kept

    @cached_property
    def byte_fallback(self) -> bool:
        return TOKEN_BYTE in self.types


def _list(meta: GGUFMeta, name: str) -> list[Any]:
    return list(meta.get(f"tokenizer.ggml.{name}", []) or [])


def _check_unique(meta: GGUFMeta, tokens: tuple[str, ...]) -> None:
    if len(set(tokens)) == len(tokens):
        return
    seen: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in seen:
            raise CorruptSource(
                f"{meta.path}: GGUF vocabulary lists {token!r} twice (ids {seen[token]} and {i})"
            )
        seen[token] = i
