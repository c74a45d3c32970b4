"""Constrained decoding: JSON Schema, grammars and tool calls enforced token by token.

Built on llguidance (an Earley parser over the tokenizer's token trie). The interface:

- :class:`ConstraintFactory` — one per loaded bundle, from its ``tokenizer.json``, its
  end-of-sequence ids and the model's vocabulary size (the logits' length; ids the
  tokenizer lacks are never allowed). Its llguidance tokenizer is built on first use or
  by :meth:`ConstraintFactory.load`: seconds for a 150k vocabulary, holding the GIL, and
  tens of MB kept, so build it at load time when constraints are expected. Compiled
  grammars are cached per factory, so a repeated schema costs a copy, not a compile.
- :meth:`ConstraintFactory.compile` ``(spec) -> Constraint``. A spec is an OpenAI
  ``response_format`` (``json_object``, ``json_schema``), a grammar
  ``{"type": "lark" | "regex", "grammar": text}`` (llguidance's Lark dialect; a regex
  must match the whole output), or a tool spec (:func:`request_spec` builds it from a
  request's fields). Invalid, unsupported or oversized specs raise ``BadRequest`` with
  one line naming the fault.
- :class:`Constraint` — per sequence, not thread-safe. Each step: ``apply(logits)``
  sets forbidden logits to -inf in place; sample; ``consume(token)``. ``accepting``:
  the output is complete, so end-of-sequence is allowed (it is masked until then);
  ``done``: nothing more may follow, end the sequence without sampling. ``prepare()``
  before the forward pass computes the next mask in a worker thread (llguidance drops
  the GIL); ``forced()`` lists tokens the grammar fixes next, for a caller that can feed
  several tokens in one forward.
- :func:`parse_tool_calls` ``(text)`` splits a tool-call answer (markers kept: see
  :meth:`ConstraintFactory.decode`) into content and OpenAI-shaped ``tool_calls``.

JSON comes out on one line (one optional space after ``,`` and ``:``); property order
follows the schema; strings hold characters as they are (``\\u`` escapes only for control
characters). The constraint cannot finish an answer that ``max_tokens`` or a stop string
cuts short: such an answer is incomplete. Unsupported JSON Schema keywords (``not``,
``uniqueItems``, unknown ``format`` values, lookaround in ``pattern``) are refused, never
ignored.

Limits (:class:`ConstraintLimits`): spec size (64 KiB) and nesting (64 levels) checked
before compiling; llguidance's grammar size and lexer/parser fuel bound compile time and
each step's work; a step's mask that needs more fuel, or more than ``mask_budget_ms`` of
wall-clock, ends that sequence with ``BadRequest``, never a stuck worker.
"""

from edge_runtime.engine.constraints.guidance import (
    SPEC_TYPES,
    Constraint,
    ConstraintFactory,
    request_spec,
)
from edge_runtime.engine.constraints.limits import ConstraintLimits
from edge_runtime.engine.constraints.tools import HERMES, HermesFormat, Tool, parse_tool_calls

__all__ = [
    "HERMES",
    "SPEC_TYPES",
    "Constraint",
    "ConstraintFactory",
    "ConstraintLimits",
    "HermesFormat",
    "Tool",
    "parse_tool_calls",
    "request_spec",
]
