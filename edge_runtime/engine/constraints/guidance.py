"""llguidance behind a small interface: a factory per bundle, a constraint per sequence."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.engine.constraints.grammars import (
    lark_grammar,
    one_line,
    regex_grammar,
    response_format_grammar,
)
from edge_runtime.engine.constraints.limits import ConstraintLimits, check_document
from edge_runtime.engine.constraints.tools import HERMES, HermesFormat, chosen_tools, read_tools
from edge_runtime.errors import BadRequest, BundleError, InternalError

SPEC_TYPES = ("json_object", "json_schema", "lark", "regex", "tools")
_TEMPLATES = 8  # compiled grammars kept per bundle: machines tend to repeat one schema
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _mask_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edge-mask")
        return _executor


class Constraint:
    """One sequence's grammar state: which tokens may come next, and what has come.

    Per step: :meth:`apply` to the logits (or :meth:`prepare` first, before the forward
    pass, so the mask is computed while the model runs), sample, then :meth:`consume`
    the token. Not thread-safe: one sequence, one caller.
    """

    def __init__(self, matcher: Any, *, vocab_size: int, eos_ids: Collection[int],
                 budget_s: float) -> None:
        self._matcher = matcher
        self._vocab = vocab_size
        self._eos_set = frozenset(i for i in eos_ids if 0 <= i < vocab_size)
        self._eos = np.array(sorted(self._eos_set), dtype=np.int64)
        self._budget_s = budget_s
        self._words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._blocked = np.empty(vocab_size, dtype=bool)
        self._pending: Future[float] | None = None
        self._ended = False
        self._fresh = False  # the mask in _words is for the current state
        self._failure: BadRequest | None = None

    @property
    def accepting(self) -> bool:
        """Whether the output so far is complete: end-of-sequence is allowed now."""
        self._settle()
        return self._ended or bool(self._matcher.is_accepting())

    @property
    def done(self) -> bool:
        """Whether nothing more may follow: the sequence should end (no sample needed)."""
        self._settle()
        return self._ended or bool(self._matcher.is_stopped())

    def _settle(self) -> None:
        """Let a mask being computed in the worker finish: the matcher is not shared."""
        if self._pending is not None:
            self._check(self._wait())

    def prepare(self) -> None:
        """Start computing the next mask in a worker thread (the library drops the GIL)."""
        if self._pending is None and self._failure is None:
            self._pending = _mask_executor().submit(self._compute)

    def apply(self, logits: np.ndarray) -> None:
        """Set the logits of tokens the grammar forbids to -inf, in place (last axis: vocab)."""
        if logits.shape[-1] != self._vocab:
            raise ValueError(f"logits have {logits.shape[-1]} entries, not {self._vocab}")
        if not self._fresh:
            self._check(self._wait() if self._pending is not None else self._compute())
        allowed = np.unpackbits(self._words.view(np.uint8), count=self._vocab, bitorder="little")
        allowed = allowed.view(bool)
        allowed[self._eos] = self.accepting
        np.logical_not(allowed, out=self._blocked)
        np.copyto(logits, -np.inf, where=self._blocked)

    def allowed_ids(self) -> np.ndarray:
        """Return the ids :meth:`apply` would leave alone (for tests and debugging)."""
        logits = np.zeros(self._vocab, dtype=np.float32)
        self.apply(logits)
        return np.flatnonzero(np.isfinite(logits))

    def consume(self, token: int) -> None:
        """Advance past ``token``: one the last :meth:`apply` allowed, or one of :meth:`forced`.

        A token the last mask forbade is the caller's fault (InternalError); one the library
        allowed but then could not take means the grammar hit a limit (BadRequest).
        """
        if self._pending is not None:
            self._wait()
        if self._failure is not None:
            raise self._failure
        if self._fresh and not self._allowed(token):
            raise InternalError(f"constraint: token {token} was not allowed here")
        self._fresh = False
        if token in self._eos_set:
            if not self.accepting:
                raise InternalError(f"constraint: end-of-sequence {token} before the end")
            self._ended = True
        elif not self._matcher.consume_token(int(token)):
            raise self._grammar_failure()

    def forced(self) -> list[int]:
        """Return the tokens the grammar forces next (may be empty); consume them to skip ahead."""
        if self.done or self._failure is not None:
            return []
        return [int(t) for t in self._matcher.compute_ff_tokens()]

    def _compute(self) -> float:
        start = time.perf_counter()
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        return time.perf_counter() - start

    def _wait(self) -> float:
        assert self._pending is not None
        try:
            return self._pending.result(timeout=self._budget_s)
        except FutureTimeout:
            self._failure = self._over_budget(self._budget_s)
            raise self._failure from None
        finally:
            self._pending = None

    def _check(self, elapsed: float) -> None:
        if self._failure is not None:
            raise self._failure
        if elapsed > self._budget_s:
            self._failure = self._over_budget(elapsed)
            raise self._failure
        if self._matcher.is_error():
            raise self._grammar_failure()
        self._fresh = True

    def _over_budget(self, elapsed: float) -> BadRequest:
        return BadRequest(
            f"the grammar took {elapsed * 1e3:.0f} ms to find the next allowed tokens; "
            f"the limit is {self._budget_s * 1e3:.0f} ms"
        )

    def _grammar_failure(self) -> BadRequest:
        message = one_line(self._matcher.get_error())
        self._failure = BadRequest(f"the grammar failed at this point: {message}")
        return self._failure

    def _allowed(self, token: int) -> bool:
        if not 0 <= token < self._vocab:
            return False
        if token in self._eos_set:
            return self.accepting
        return bool((int(self._words[token >> 5]) >> (token & 31)) & 1)


class ConstraintFactory:
    """Compile specs into constraints for one bundle's tokenizer (build once per bundle).

    ``vocab_size`` is the model's (the logits' length); ids the tokenizer does not have
    are never allowed. The llguidance tokenizer is built on first use (or :meth:`load`):
    seconds for a 150k vocabulary, holding the GIL, and tens of MB kept.
    """

    def __init__(
        self,
        tokenizer_path: Path | str,
        *,
        eos_ids: Collection[int],
        vocab_size: int,
        limits: ConstraintLimits | None = None,
        tool_format: HermesFormat = HERMES,
    ) -> None:
        if not eos_ids:
            raise ValueError("a constraint needs at least one end-of-sequence id")
        self.path = Path(tokenizer_path)
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.vocab_size = vocab_size
        self.limits = limits or ConstraintLimits()
        self.tool_format = tool_format
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._templates: OrderedDict[str, Any] = OrderedDict()

    def load(self) -> Any:
        """Build (once) and return the llguidance tokenizer."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._build()
            return self._tokenizer

    def _build(self) -> Any:
        from llguidance import LLTokenizer

        eos = min(self.eos_ids)
        try:
            try:
                return LLTokenizer(str(self.path), n_vocab=self.vocab_size, eos_token=eos)
            except ValueError as exc:
                if "vocab size too small" not in str(exc):
                    raise
                return LLTokenizer(str(self.path), eos_token=eos)  # the model has fewer rows
        except ValueError as exc:
            raise BundleError(f"cannot build the constraint tokenizer ({exc})", self.path) from exc

    def compile(self, spec: Mapping[str, Any]) -> Constraint:
        """Return a fresh constraint for ``spec``; raise BadRequest if it is invalid or too big.

        ``spec`` is ``{"type": "json_object"}``, ``{"type": "json_schema", "json_schema":
        {"name", "schema", "strict"}}``, ``{"type": "lark" | "regex", "grammar": text}``,
        or ``{"type": "tools", "tools": [...], "tool_choice": ..., "parallel_tool_calls":
        bool, "response_format": {...}}`` (see :func:`request_spec`).
        """
        template = self._template(self.grammar(spec))
        with self._lock:
            matcher = template.deep_copy()
        return Constraint(matcher, vocab_size=self.vocab_size, eos_ids=self.eos_ids,
                          budget_s=self.limits.mask_budget_ms / 1e3)

    def grammar(self, spec: Mapping[str, Any]) -> str:
        """Return the llguidance grammar text for ``spec`` (not yet checked by the library)."""
        if not isinstance(spec, Mapping):
            raise BadRequest("a constraint spec must be a JSON object")
        kind = spec.get("type")
        if kind in ("json_object", "json_schema"):
            return response_format_grammar(spec, self.limits)
        if kind == "lark":
            return lark_grammar(spec.get("grammar"), self.limits)
        if kind == "regex":
            return regex_grammar(spec.get("grammar"), self.limits)
        if kind == "tools":
            return self._tool_grammar(spec)
        expected = ", ".join(SPEC_TYPES)
        raise BadRequest(f"unknown constraint type {kind!r}; expected one of {expected}")

    def decode(self, ids: list[int]) -> str:
        """Return the text of ``ids`` with special tokens spelled out (for parse_tool_calls)."""
        return str(self.load().decode_str([int(i) for i in ids]))

    def _tool_grammar(self, spec: Mapping[str, Any]) -> str:
        tools = read_tools(spec.get("tools"), self.limits)
        chosen = chosen_tools(tools, spec.get("tool_choice"))
        if chosen is None:
            raise BadRequest('tool_choice "none" needs no constraint')
        allowed, free_text = chosen
        content = _content_schema(spec.get("response_format")) if free_text else None
        if content is not None:
            check_document("response_format", content, self.limits)
        return self.tool_format.grammar(
            allowed,
            free_text=free_text,
            content=content,
            parallel=bool(spec.get("parallel_tool_calls", True)),
            special=self._is_special(self.tool_format.open) and self._is_special(
                self.tool_format.close),
        )

    def _is_special(self, text: str) -> bool:
        tok = self.load()
        ids = tok.tokenize_str(text, parse_special=True)
        return len(ids) == 1 and bool(tok.is_special_token(ids[0]))

    def _template(self, grammar: str) -> Any:
        """Return the compiled matcher for ``grammar``, from the cache or compiled now."""
        with self._lock:
            if grammar in self._templates:
                self._templates.move_to_end(grammar)
                return self._templates[grammar]
        matcher = self._new_matcher(grammar)
        with self._lock:
            self._templates[grammar] = matcher
            while len(self._templates) > _TEMPLATES:
                self._templates.popitem(last=False)
        return matcher

    def _new_matcher(self, grammar: str) -> Any:
        from llguidance import LLMatcher

        tokenizer = self.load()
        matcher = LLMatcher(tokenizer, grammar, log_level=0, limits=self.limits.parser_limits())
        if not matcher.is_error():
            # The first mask is where a lexer that is too big shows: refuse it here, not later.
            probe = Constraint(matcher, vocab_size=self.vocab_size, eos_ids=self.eos_ids,
                               budget_s=self.limits.mask_budget_ms / 1e3)
            try:
                probe._check(probe._compute())
            except BadRequest as exc:
                raise BadRequest(f"grammar: {exc}") from exc
        if matcher.is_error():
            raise BadRequest(f"grammar: {one_line(matcher.get_error())}")
        return matcher


def _content_schema(response_format: object) -> Mapping[str, Any] | None:
    """Return the JSON Schema an ``auto`` answer's text must follow, None for free text."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise BadRequest("response_format must be a JSON object")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    body = response_format.get("json_schema")
    schema = body.get("schema") if isinstance(body, Mapping) else None
    if kind != "json_schema" or not isinstance(schema, Mapping):
        raise BadRequest('response_format must be "text", "json_object" or "json_schema"')
    return schema


def request_spec(
    *,
    response_format: Mapping[str, Any] | None = None,
    grammar: Mapping[str, Any] | None = None,
    tools: list[Any] | None = None,
    tool_choice: object = None,
    parallel_tool_calls: bool = True,
) -> dict[str, Any] | None:
    """Return the spec that a request's fields ask for, None when they ask for no constraint."""
    wants_json = response_format is not None and response_format.get("type") not in (None, "text")
    if response_format is not None and response_format.get("type") not in (
        None, "text", "json_object", "json_schema"
    ):
        raise BadRequest('response_format.type must be "text", "json_object" or "json_schema"')
    if grammar is not None and wants_json:
        raise BadRequest("grammar and a JSON response_format cannot be combined")
    if grammar is not None and (not isinstance(grammar, Mapping) or grammar.get("type") not in (
        "lark", "regex"
    )):
        raise BadRequest('grammar must be {"type": "lark" | "regex", "grammar": "..."}')
    calls = tools is not None and tool_choice != "none"
    if calls and grammar is not None:
        raise BadRequest("grammar cannot be combined with tools")
    if calls:
        return {"type": "tools", "tools": tools, "tool_choice": tool_choice,
                "parallel_tool_calls": parallel_tool_calls, "response_format": response_format}
    if grammar is not None:
        return dict(grammar)
    return dict(response_format) if wants_json and response_format is not None else None
