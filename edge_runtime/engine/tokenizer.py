"""Tokenize with the bundle's ``tokenizer.json``; turn token ids back into text piece by piece."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from edge_runtime.errors import BundleError

_REPLACEMENT = "\ufffd"
_MAX_CHAR_BYTES = 4  # held tokens after which U+FFFD is taken as really invalid bytes
_CONTEXT_TOKENS = 5  # prompt tokens kept as decoding context, so leading spaces survive


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with the bundle's bos/eos facts."""

    def __init__(self, path: Path, *, bos_id: int | None = None, add_bos: bool = False) -> None:
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on parse errors
            raise BundleError(f"cannot read tokenizer ({exc})", path) from exc
        self.bos_id = bos_id
        self.add_bos = add_bos and bos_id is not None
        self.control_ids = frozenset(
            token_id
            for token_id, token in self._tok.get_added_tokens_decoder().items()
            if token.special
        )
        # ``encode_special_tokens`` is a switch on the shared tokenizer; flipping it while
        # another thread decodes fails ("Already mutably borrowed"), so every call into the
        # library holds this lock.
        self._lock = threading.Lock()

    def encode(
        self, text: str, *, add_bos: bool | None = None, special: bool = True
    ) -> list[int]:
        """Return the ids of ``text``.

        With ``special`` the markup of control tokens (``<|im_end|>``) becomes those tokens;
        without it, it is read as plain text.
        """
        with self._lock:
            self._tok.encode_special_tokens = not special
            try:
                ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
            finally:
                self._tok.encode_special_tokens = False
        prepend = self.add_bos if add_bos is None else add_bos
        if prepend and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def has_control_markup(self, text: str) -> bool:
        """Whether ``text`` holds markup that would tokenize to a control token."""
        return not self.control_ids.isdisjoint(self.encode(text, add_bos=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Return the text of ``ids`` with special tokens left out."""
        with self._lock:
            return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def token_text(self, token_id: int) -> str | None:
        """Return the vocabulary entry for ``token_id`` (raw, not decoded)."""
        with self._lock:
            token: str | None = self._tok.id_to_token(token_id)
        return token

    @property
    def vocab_size(self) -> int:
        with self._lock:
            return int(self._tok.get_vocab_size(with_added_tokens=True))

    def detokenizer(self, prompt_ids: Sequence[int] = ()) -> IncrementalDetokenizer:
        """Return a fresh incremental detokenizer that continues after ``prompt_ids``."""
        return IncrementalDetokenizer(self, prompt_ids)


class IncrementalDetokenizer:
    """Turn a growing list of token ids into text deltas that never split a character.

    Each push decodes a small window: the text of ``ids[prefix:]`` minus the text of
    ``ids[prefix:read]``. While that text ends in U+FFFD (a character whose bytes are not
    all there yet) nothing is released; the next token completes it. After four held tokens
    (the longest UTF-8 character) the bytes are taken as invalid and released as U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        context = list(prompt_ids[-_CONTEXT_TOKENS:])
        if tokenizer.decode(context).endswith(_REPLACEMENT):
            context = []
        self._ids: list[int] = context
        self._prefix = 0
        self._read = len(context)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self._ids.append(token_id)
        done = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        waiting = text.endswith(_REPLACEMENT) and len(self._ids) - self._read < _MAX_CHAR_BYTES
        if len(text) <= len(done) or waiting:
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done) :]

    def flush(self) -> str:
        """Return whatever is still held back, without a trailing unfinished character."""
        done = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        # A character cut off by the end of generation is dropped, not shown as U+FFFD.
        return text[len(done) :].rstrip(_REPLACEMENT) if len(text) > len(done) else ""
