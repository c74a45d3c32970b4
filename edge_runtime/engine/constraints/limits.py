"""Bounds on what a constraint may cost: spec size and nesting, grammar size, work per step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge_runtime.errors import BadRequest


@dataclass(frozen=True)
class ConstraintLimits:
    """How big a spec may be and how much work its grammar may do.

    ``max_spec_bytes`` and ``max_depth`` are checked before the library sees the spec.
    The fields after ``mask_budget_ms`` are llguidance's parser limits (its "fuel"): a
    grammar that needs more is refused when compiled, or ends the sequence at the step
    that needs more. ``mask_budget_ms`` is the wall-clock backstop
    for one step's mask: a step that takes longer ends the sequence with ``bad_request``.
    """

    max_spec_bytes: int = 64 * 1024
    max_depth: int = 64  # of the JSON document: two levels per nested object schema
    max_tools: int = 64
    mask_budget_ms: float = 500.0  # a backstop: the fuel limits bound a step first
    max_grammar_size: int = 200_000
    max_items_in_row: int = 2_000
    initial_lexer_fuel: int = 1_000_000
    step_lexer_fuel: int = 200_000
    step_max_items: int = 50_000
    max_lexer_states: int = 50_000  # each costs 1-2 kB of memory

    def parser_limits(self) -> Any:
        """Return these limits as llguidance's ``LLParserLimits``."""
        from llguidance import LLParserLimits

        return LLParserLimits(
            max_items_in_row=self.max_items_in_row,
            initial_lexer_fuel=self.initial_lexer_fuel,
            step_lexer_fuel=self.step_lexer_fuel,
            step_max_items=self.step_max_items,
            max_lexer_states=self.max_lexer_states,
            max_grammar_size=self.max_grammar_size,
            verbose_errors=False,  # else errors carry the parser state and the whole grammar
        )


def check_text(what: str, text: object, limits: ConstraintLimits) -> str:
    """Return ``text`` if it is a non-empty string within the size limit, else raise."""
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"{what} must be a non-empty string")
    size = len(text.encode("utf-8"))
    if size > limits.max_spec_bytes:
        raise BadRequest(f"{what} is {size} bytes; the limit is {limits.max_spec_bytes}")
    return text


def check_document(what: str, doc: object, limits: ConstraintLimits) -> None:
    """Raise unless ``doc`` (parsed JSON) nests at most ``max_depth`` deep and fits the size."""
    depth = _depth(doc, limits.max_depth)
    if depth > limits.max_depth:
        raise BadRequest(f"{what} nests deeper than {limits.max_depth} levels")
    size = len(json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    if size > limits.max_spec_bytes:
        raise BadRequest(f"{what} is {size} bytes as JSON; the limit is {limits.max_spec_bytes}")


def _depth(doc: object, cap: int) -> int:
    """Return the nesting depth of ``doc``, counting no further than ``cap + 1`` (no recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(doc, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: list[object] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > cap:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest
