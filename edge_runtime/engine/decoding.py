"""One sequence's decoding state: sampler, constraint, detokenizer, channels, stop matcher.

:class:`Decoding` knows nothing about the model: whoever runs the graph hands it the
logits for the sequence and gets back the token to feed next, the text that became safe
to show (answer and reasoning apart), and whether the sequence is done. The scheduler
steps many of these, one per sequence.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.engine.channels import Channel, Channels, Markers, Piece
from edge_runtime.engine.constraints import Constraint
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
    reasoning: str = ""

    @property
    def finished(self) -> bool:
        return self.finish is not None


@dataclass(frozen=True)
class Shape:
    """How a sequence's text is shaped: its constraint, markers and reasoning budget."""

    constraint: Constraint | None = None
    markers: Markers = field(default_factory=Markers)
    reasoning: bool = False
    """The prompt opened the reasoning (the answer starts inside it)."""
    max_reasoning_tokens: int | None = None
    close_reasoning: tuple[int, ...] = ()
    """The tokens that end the reasoning, fed when its budget is spent."""
    marker_texts: Mapping[int, str] = field(default_factory=dict)
    """Marker tokens the detokenizer leaves out (special tokens), with the text they stand for."""


class Decoding:
    """Turn successive logits into tokens and text for one sequence.

    ``max_new_tokens`` is the hard cap (the smaller of the request's ``max_tokens`` and the
    room left in the context); reaching it finishes with LENGTH. An end-of-sequence token,
    a stop string, or a constraint that allows nothing more finishes with STOP; none of
    them appears in the text.
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
        shape: Shape | None = None,
    ) -> None:
        self.shape = shape or Shape()
        self.prompt_tokens = len(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.eos_ids = frozenset(() if ignore_eos else eos_ids)
        self.sampler = Sampler(params.sampler, vocab_size, list(prompt_ids))
        self.detokenizer = tokenizer.detokenizer(prompt_ids)
        self.channels = Channels(self.shape.markers, reasoning=self.shape.reasoning)
        self.stops = StopMatcher(params.stop)
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self.reasoning_pieces: list[str] = []
        self.reasoning_tokens = 0
        self.finish: FinishReason | None = None
        self._forced: list[int] = []

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_pieces).strip()

    @property
    def held(self) -> str:
        """Text from a tool-call marker on (never streamed; parsed for the final)."""
        return self.channels.held

    def step(self, logits: np.ndarray) -> Step:
        """Choose the next token from ``logits`` [vocab] and advance the sequence."""
        if self.finish is not None:
            raise RuntimeError("step() after the sequence finished")
        constraint = self.shape.constraint
        if constraint is not None and constraint.done:
            return self._step(-1, self._end(FinishReason.STOP))
        self._budget_reasoning()
        token = self._choose(logits, constraint)
        if constraint is not None:
            constraint.consume(token)
        if token in self.eos_ids:
            return self._step(token, self._end(FinishReason.STOP))
        self.tokens.append(token)
        piece = self._text(token)
        if self.stops.stopped:
            return self._step(token, self._end(FinishReason.STOP, piece))
        if len(self.tokens) >= self.max_new_tokens:
            return self._step(token, self._end(FinishReason.LENGTH, piece))
        if constraint is not None and constraint.done:
            return self._step(token, self._end(FinishReason.STOP, piece))
        self._keep(piece)
        if constraint is not None:
            constraint.prepare()  # the next mask is computed while the model runs
        return self._step(token, piece)

    def stop(self, reason: FinishReason) -> Piece:
        """End the sequence from outside (cancelled, error); return text still held back."""
        if self.finish is not None:
            return Piece()
        return self._end(reason)

    def _choose(self, logits: np.ndarray, constraint: Constraint | None) -> int:
        if self._forced:
            return self._forced.pop(0)
        if constraint is None:
            return self.sampler.sample(logits)
        constraint.apply(logits)
        return self.sampler.sample(logits, masked=True)

    def _text(self, token: int) -> Piece:
        """Detokenize ``token`` and route it: answer (through the stop matcher) or reasoning."""
        text = self.detokenizer.push(token) + self.shape.marker_texts.get(token, "")
        if self.channels.channel is Channel.REASONING:
            self.reasoning_tokens += 1
        piece = self.channels.push(text)
        return Piece(self.stops.push(piece.text), piece.reasoning)

    def _budget_reasoning(self) -> None:
        cap = self.shape.max_reasoning_tokens
        spent = cap is not None and self.reasoning_tokens >= cap
        if spent and self.channels.channel is Channel.REASONING and not self._forced:
            self._forced = list(self.shape.close_reasoning)

    def _keep(self, piece: Piece) -> None:
        self.pieces.append(piece.text)
        self.reasoning_pieces.append(piece.reasoning)

    def _step(self, token: int, piece: Piece) -> Step:
        return Step(token, piece.text, self.finish, piece.reasoning)

    def _end(self, reason: FinishReason, piece: Piece | None = None) -> Piece:
        self.finish = reason
        text, reasoning = (piece.text, piece.reasoning) if piece else ("", "")
        if not self.stops.stopped:
            tail = self.channels.push(self.detokenizer.flush())
            rest = self.channels.flush()
            text += self.stops.push(tail.text + rest.text) + self.stops.flush()
            reasoning += tail.reasoning + rest.reasoning
        ended = Piece(text, reasoning)
        self._keep(ended)
        return ended
