"""Tokenize text straight from a SentencePiece-family GGUF vocabulary, as llama.cpp does.

This is the reference the rebuilt ``tokenizer.json`` is checked against. Steps:

1. Split the raw text at every control, user-defined and unknown token, longest tokens
   first, each occurrence matched whole as the vocabulary writes it; for Phi-3, the
   whitespace after most of them is dropped.
2. Each piece of text between them gets a leading space when ``add_space_prefix`` is set
   (so the first piece and every piece after a matched token), then "▁" for each space.
3. Merge adjacent symbols, starting from single characters: always the pair whose merged
   piece scores highest, the leftmost of equals, until no adjacent pair forms a piece.
4. A symbol outside the vocabulary becomes its UTF-8 bytes as ``<0xXX>`` tokens, or the
   unknown token (one for a run of them) when the vocabulary has no byte pieces.

Merging forms normal pieces only, as SentencePiece does. llama.cpp merges into any token, but
the others are split out whole first (control, user-defined, unknown) or, in the vocabularies
met so far, have no halves to be merged from (byte, unused).
"""

from __future__ import annotations

import heapq

from converters.sources.gguf_meta import TOKEN_USER_DEFINED
from converters.sources.spm_vocab import SPACE_MARK, SpmVocab, byte_piece

ASCII_SPACE = " \t\n\v\f\r"  # what C's isspace() takes, as llama.cpp strips

# Fixed texts the rebuilt tokenizer must split exactly as the reference does.
PROBE_TEXTS = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Crème brûlée, naïve façade, Größe, smørrebrød, São Paulo, Ελληνικά, Русский текст.",
    "你好，世界。今天天气很好。日本語のテキストと한국어 문장.",  # noqa: RUF001
    "Emoji: 🙂 🚀 ✅ 👩‍💻 🇫🇷 and symbols ∑ √ ∞ ≠ € ₿",
    "Numbers 0 7 42 123 2024-06-01 3.14159 1,000,000 ٣٤٥",
    "  two leading spaces, then    four, then one at the end ",
    "tabs\tone\t\ttwo\t\t\tthree; newlines\none\n\ntwo\n\n\nthree\r\nwindows",
    "def add(a, b):\n    return a + b  # sum\n\nif __name__ == '__main__':\n\tprint(add(1, 2))",
    '{"key": [1, 2, 3], "path": "C:\\\\Temp\\\\x", "url": "https://example.org/a?b=c&d=e"}',
    "<p>html</p> <0x41> ▁literal mark ▁▁ and <unk>-like text",
)


def token_probes(vocab: SpmVocab, user_defined: int = 24, others: int = 8) -> list[str]:
    """Return texts with whole-matched tokens inside, a spread of each kind."""
    chosen: list[int] = []
    for wanted, count in ((True, user_defined), (False, others)):
        ids = [i for i in vocab.whole_ids if (vocab.types[i] == TOKEN_USER_DEFINED) == wanted]
        chosen += ids[:: max(1, len(ids) // count)][:count]
    return [f"a {vocab.tokens[i]} b\n c{vocab.tokens[i]}" for i in chosen]


class SpmReference:
    """Encode text with the GGUF's own pieces, scores and token types."""

    def __init__(self, vocab: SpmVocab) -> None:
        self.vocab = vocab
        whole = sorted(vocab.whole_ids, key=lambda i: -len(vocab.tokens[i].encode("utf-8")))
        self._whole = [(vocab.tokens[i], i, i in vocab.rstrip_ids) for i in whole]

    def encode(self, text: str) -> list[int]:
        """Return the token ids of ``text`` (no BOS or EOS)."""
        ids: list[int] = []
        after_token = True
        for part in self._partition(text):
            if isinstance(part, int):
                ids.append(part)
                after_token = True
                continue
            prefix = " " if self.vocab.add_space_prefix and after_token else ""
            ids.extend(self._merge((prefix + part).replace(" ", SPACE_MARK)))
            after_token = False
        return ids

    def _partition(self, text: str) -> list[str | int]:
        parts: list[str | int] = [text] if text else []
        for token, token_id, rstrip in self._whole:
            parts = [p for part in parts for p in _split_at(part, token, token_id, rstrip)]
        return parts

    def _merge(self, text: str) -> list[int]:
        symbols = list(text)
        following = [*range(1, len(symbols)), -1]
        preceding = list(range(-1, len(symbols) - 1))
        queue: list[tuple[float, int, str]] = []
        scores = self.vocab.normal_scores

        def offer(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                piece = symbols[left] + symbols[right]
                if piece in scores:
                    heapq.heappush(queue, (-scores[piece], left, piece))

        for i in range(len(symbols) - 1):
            offer(i, i + 1)
        while queue:
            _, left, piece = heapq.heappop(queue)
            right = following[left] if symbols[left] else -1
            if right < 0 or symbols[left] + symbols[right] != piece:
                continue  # one side was merged into something else meanwhile
            symbols[left], symbols[right] = piece, ""
            following[left] = following[right]
            if following[left] >= 0:
                preceding[following[left]] = left
            offer(preceding[left], left)
            offer(left, following[left])
        return self._ids([s for s in symbols if s])

    def _ids(self, symbols: list[str]) -> list[int]:
        ids: list[int] = []
        unk = self.vocab.unk_id
        for symbol in symbols:
            if symbol in self.vocab.ids:
                ids.append(self.vocab.ids[symbol])
                continue
            pieces = [byte_piece(b) for b in symbol.encode("utf-8")]
            if self.vocab.byte_fallback and all(p in self.vocab.ids for p in pieces):
                ids.extend(self.vocab.ids[p] for p in pieces)
            elif unk is not None and not (ids and ids[-1] == unk):
                ids.append(unk)
        return ids


def _split_at(part: str | int, token: str, token_id: int, rstrip: bool) -> list[str | int]:
    if isinstance(part, int) or token not in part:
        return [part]
    pieces: list[str | int] = []
    for i, text in enumerate(part.split(token)):
        if i:
            pieces.append(token_id)
            text = text.lstrip(ASCII_SPACE) if rstrip else text
        if text:
            pieces.append(text)
    return pieces
