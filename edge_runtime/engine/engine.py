"""The ONNX Runtime engine: one loaded bundle, one generation at a time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime import __version__
from edge_runtime.bundle.manifest import Manifest
from edge_runtime.engine.chat_template import ChatTemplate
from edge_runtime.engine.decoding import Decoding
from edge_runtime.engine.defaults import GenerationDefaults, resolve
from edge_runtime.engine.prompt import PromptEngine, encode_prompt
from edge_runtime.engine.runners import DecoderRunner
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.engine.types import (
    DeltaCallback,
    FinishReason,
    GenerationResult,
    Prompt,
    SamplingParams,
    Timings,
    Usage,
)
from edge_runtime.errors import ContextLengthExceeded, EdgeRuntimeError, InternalError

log = logging.getLogger(__name__)

_Run = Generator[str, None, GenerationResult]


@dataclass(frozen=True)
class LoadReport:
    """How the bundle was loaded."""

    providers: tuple[str, ...]
    load_s: float
    optimized_cache_hit: bool
    threads: int


@dataclass
class _Clock:
    """Timestamps of one generation (``time.perf_counter`` seconds)."""

    called: float
    queued_s: float = 0.0
    prefill_s: float = 0.0
    first_token: float = 0.0
    last_token: float = 0.0

    def timings(self) -> Timings:
        first = max(self.first_token - self.called - self.queued_s, 0.0)
        decode = max(self.last_token - self.first_token, 0.0)
        return Timings(self.queued_s, self.prefill_s, decode, first)


class OnnxEngine(PromptEngine):
    """A loaded bundle. Thread-safe: concurrent calls wait their turn on one lock."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        runner: DecoderRunner,
        tokenizer: Tokenizer,
        template: ChatTemplate | None,
        defaults: GenerationDefaults,
        report: LoadReport,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.runner = runner
        self.tokenizer = tokenizer
        self.template = template
        self.defaults = defaults
        self.report = report
        self._lock = threading.Lock()

    @property
    def context_length(self) -> int:
        return self.runner.max_length

    @property
    def info(self) -> dict[str, object]:
        m = self.manifest
        return {
            "model": m.name,
            "source": m.source.id,
            "architecture": m.architecture.model_type,
            "quantization": m.quantization.method,
            "bits": m.quantization.bits,
            "context_length": self.context_length,
            "graph": m.graph.kind,
            "provider": self.report.providers[0],
            "providers": list(self.report.providers),
            "threads": self.report.threads,
            "load_s": round(self.report.load_s, 3),
            "runtime_version": __version__,
        }

    def encode(self, prompt: Prompt, *, chat: bool = True) -> list[int]:
        """Return the token ids ``generate`` would feed for ``prompt``."""
        return encode_prompt(prompt, chat=chat, template=self.template, tokenizer=self.tokenizer)

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        chat: bool = True,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Return an iterator of text pieces as they are decided; close it to stop early.

        Bad prompts and over-long prompts raise here, before the iterator is returned.
        """
        called = time.perf_counter()
        ids = self.encode(prompt, chat=chat)
        return self._run(ids, self.start(ids, params), cancel, called)

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
        ignore_eos: bool = False,
        _called: float | None = None,
    ) -> GenerationResult:
        """Generate from token ids; ``ignore_eos`` keeps going to ``max_tokens`` (benchmarks)."""
        called = time.perf_counter() if _called is None else _called
        decoding = self.start(prompt_ids, params, ignore_eos=ignore_eos)
        run = self._run(prompt_ids, decoding, cancel, called)
        return _drive(run, on_delta)

    def start(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, ignore_eos: bool = False
    ) -> Decoding:
        """Check ``prompt_ids`` fit the context and return a fresh decoding state for them."""
        limit = self.context_length
        if len(prompt_ids) >= limit:
            raise ContextLengthExceeded(
                len(prompt_ids),
                limit,
                f"prompt is {len(prompt_ids)} tokens; the model's context holds {limit} "
                f"(prompt and answer together), so the prompt must be under {limit} tokens",
            )
        resolved = resolve(params, self.defaults)
        arch = self.manifest.architecture
        return Decoding(
            self.tokenizer,
            prompt_ids,
            resolved,
            eos_ids=arch.eos_token_ids,
            max_new_tokens=min(resolved.max_tokens, limit - len(prompt_ids)),
            vocab_size=arch.vocab_size,
            ignore_eos=ignore_eos,
        )

    def _run(
        self,
        prompt_ids: Sequence[int],
        decoding: Decoding,
        cancel: threading.Event | None,
        called: float,
    ) -> _Run:
        waited = time.perf_counter()
        with self._lock:
            clock = _Clock(called=called, queued_s=time.perf_counter() - waited)
            yield from self._decode(prompt_ids, decoding, cancel, clock)
            return GenerationResult(
                text=decoding.text,
                finish_reason=decoding.finish or FinishReason.STOP,
                usage=Usage(len(prompt_ids), decoding.completion_tokens),
                timings=clock.timings(),
                token_ids=tuple(decoding.tokens),
            )

    def _decode(
        self,
        prompt_ids: Sequence[int],
        decoding: Decoding,
        cancel: threading.Event | None,
        clock: _Clock,
    ) -> Generator[str, None, None]:
        cancelled = cancel.is_set if cancel is not None else _never
        if cancelled():
            decoding.stop(FinishReason.CANCELLED)
            return
        self.runner.reset(len(prompt_ids) + decoding.max_new_tokens)
        start = time.perf_counter()
        logits = self._forward(np.asarray(prompt_ids, dtype=np.int64))
        clock.prefill_s = time.perf_counter() - start
        while True:
            step = decoding.step(logits)
            clock.last_token = time.perf_counter()
            if not clock.first_token:
                clock.first_token = clock.last_token
            if step.delta:
                yield step.delta
            if step.finished:
                return
            if cancelled():
                if tail := decoding.stop(FinishReason.CANCELLED):
                    yield tail
                return
            logits = self._forward(np.array([step.token], dtype=np.int64))

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        try:
            return self.runner.forward(ids)
        except EdgeRuntimeError:
            raise
        except Exception as exc:  # onnxruntime raises untyped errors
            log.exception("model run failed")
            raise InternalError(f"model run failed: {exc}") from exc


def _never() -> bool:
    return False


def _drive(run: _Run, on_delta: Callable[[str], None] | None) -> GenerationResult:
    """Run a generation to its end, passing each piece to ``on_delta``."""
    try:
        while True:
            try:
                delta = next(run)
            except StopIteration as done:
                result: GenerationResult = done.value
                return result
            if on_delta is not None:
                on_delta(delta)
    finally:
        run.close()
