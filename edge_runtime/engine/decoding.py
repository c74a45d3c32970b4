"""One sequence's decoding state: sampler, detokenizer, stop matcher and counts.

:class:`Decoding` knows nothing about the model: whoever runs the graph hands it the
logits for the sequence and gets back the token to feed next, the text that became safe
to show, and whether the sequence is done. A batching loop can step many of these.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.engine.defaults import Resolved
from edge_runtime.engine.sampling import Sampler
from edge_runtime.engine.stop import StopMatcher
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.engine.types import FinishReason


@dataclass(frozen=True)
class Step:
    """What one call of :meth:`Decoding.step` produced."""

    token: int
    delta: str
    finish: FinishReason | None

    @property
    def finished(self) -> bool:
        return self.finish is not None


class Decoding:
    """Turn successive logits into tokens and text for one sequence.

    ``max_new_tokens`` is the hard cap (the smaller of the request's ``max_tokens`` and the
    room left in the context); reaching it finishes with LENGTH. An end-of-sequence token
    or a stop string finishes with STOP; neither appears in the text.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        params: Resolved,
        *,
        eos_ids: Collection[int],
        max_new_tokens: int,
        vocab_size: int,
        ignore_eos: bool = False,
    ) -> None:
        self.prompt_tokens = len(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.eos_ids = frozenset(() if ignore_eos else eos_ids)
        self.sampler = Sampler(params.sampler, vocab_size, list(prompt_ids))
        self.detokenizer = tokenizer.detokenizer(prompt_ids)
        self.stops = StopMatcher(params.stop)
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self.finish: FinishReason | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def step(self, logits: np.ndarray) -> Step:
        """Choose the next token from ``logits`` [vocab] and advance the sequence."""
        if self.finish is not None:
            raise RuntimeError("step() after the sequence finished")
        token = self.sampler.sample(logits)
        if token in self.eos_ids:
            return Step(token, self._end(FinishReason.STOP), self.finish)
        self.tokens.append(token)
        delta = self.stops.push(self.detokenizer.push(token))
        if self.stops.stopped:
            return Step(token, self._end(FinishReason.STOP, delta), self.finish)
        if len(self.tokens) >= self.max_new_tokens:
            return Step(token, self._end(FinishReason.LENGTH, delta), self.finish)
        self.pieces.append(delta)
        return Step(token, delta, None)

    def stop(self, reason: FinishReason) -> str:
        """End the sequence from outside (cancelled, error); return text still held back."""
        if self.finish is not None:
            return ""
        return self._end(reason)

    def _end(self, reason: FinishReason, delta: str = "") -> str:
        self.finish = reason
        if not self.stops.stopped:
            delta += self.stops.push(self.detokenizer.flush())
            delta += self.stops.flush()
        self.pieces.append(delta)
        return delta
