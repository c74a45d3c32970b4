"""The ONNX Runtime engine: one loaded bundle and the scheduler that generates with it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Ids
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime import __version__
from edge_runtime.bundle.manifest import Manifest
from edge_runtime.engine.channels import Markers
from edge_runtime.engine.chat_format import ChatFormat
from edge_runtime.engine.chat_template import ChatTemplate
from edge_runtime.engine.constraints import ConstraintFactory, parse_tool_calls, request_spec
from edge_runtime.engine.decoding import Decoding, Shape
from edge_runtime.engine.defaults import GenerationDefaults, resolve
from edge_runtime.engine.prefix_cache import PrefixCache
from edge_runtime.engine.prompt import EncodedPrompt, encode_request
from edge_runtime.engine.request import GenerationRequest, Sampling, StrictModel
from edge_runtime.engine.runners import KvSlots
from edge_runtime.engine.runners.single import SingleSequence
from edge_runtime.engine.scheduler import Scheduler, SchedulerCounters
from edge_runtime.engine.sequence import Clock, Sequence, now, pieces, relay
from edge_runtime.engine.slot_cache import slot_cache
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.engine.types import DeltaCallback, GenerationResult
from edge_runtime.errors import ContextLengthExceeded


@dataclass(frozen=True)
class LoadReport:
    """How the bundle was loaded."""

    providers: tuple[str, ...]
    load_s: float
    optimized_cache_hit: bool
    threads: int


class OnnxEngine:
    """A loaded bundle. Thread-safe: calls from several threads share the scheduler's slots."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        new_slots: Callable[[int], KvSlots],
        capacity: int,
        tokenizer: Tokenizer,
        template: ChatTemplate | None,
        defaults: GenerationDefaults,
        report: LoadReport,
        prefix_cache_mb: float = 0,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.template = template
        self.defaults = defaults
        self.report = report
        self.new_slots = new_slots
        """Build ``n`` more KV slots on the same session (their own caches)."""
        self.chat_format = ChatFormat.detect(template, tokenizer)
        self._constraints: ConstraintFactory | None = None
        slots = new_slots(capacity)
        cache = slot_cache(slots, prefix_cache_mb, manifest.graph.kind)
        self.scheduler = Scheduler(slots, cache=cache)

    @property
    def capacity(self) -> int:
        return self.scheduler.capacity

    @property
    def counters(self) -> SchedulerCounters:
        return self.scheduler.counters

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """The prefix cache, or None when it is off or the graph cannot have one."""
        cache = self.scheduler.cache
        return cache.cache if cache is not None else None

    @property
    def context_length(self) -> int:
        return self.scheduler.slots.max_length

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
            "max_batch": self.capacity,
            "prefix_cache_mb": round(self.prefix_cache.budget / 2**20, 2)
            if self.prefix_cache else 0,
            "load_s": round(self.report.load_s, 3),
            "runtime_version": __version__,
        }

    @property
    def constraints(self) -> ConstraintFactory:
        """The bundle's constraint compiler (its tokenizer index is built on first use)."""
        if self._constraints is None:
            arch = self.manifest.architecture
            self._constraints = ConstraintFactory(
                self.bundle_dir / self.manifest.tokenizer_file,
                eos_ids=arch.eos_token_ids, vocab_size=arch.vocab_size,
            )
        return self._constraints

    def encode(self, request: GenerationRequest) -> list[int]:
        """Return the token ids ``generate`` would feed for ``request``."""
        return self._encode(request).ids

    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
        on_reasoning: DeltaCallback | None = None,
        queued_since: float | None = None,
    ) -> GenerationResult:
        """Generate an answer (see :class:`edge_runtime.engine.types.Engine`)."""
        submitted = now() if queued_since is None else queued_since
        streaming = on_delta is not None or on_reasoning is not None
        return relay(self._start(request, cancel, submitted, streaming), on_delta, on_reasoning)

    def stream(
        self, request: GenerationRequest, *, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """Return an iterator of answer pieces; closing it early cancels the generation.

        Bad and over-long prompts raise here, before the iterator is returned.
        """
        return pieces(self._start(request, cancel, now(), streaming=True))

    def _encode(self, request: GenerationRequest) -> EncodedPrompt:
        return encode_request(request, template=self.template, tokenizer=self.tokenizer,
                              chat_format=self.chat_format)

    def _start(
        self,
        request: GenerationRequest,
        cancel: threading.Event | None,
        submitted: float,
        streaming: bool,
    ) -> Sequence:
        encoded = self._close_reasoning(request, self._encode(request))
        offered = request.tools is not None and request.tool_choice != "none"
        sequence = self._submit(encoded.ids, request, cancel, submitted, streaming=streaming,
                                shape=self._shape(request, encoded, offered))
        if offered:
            sequence.tool_calls = parse_tool_calls
        return sequence

    def _close_reasoning(self, request: GenerationRequest, encoded: EncodedPrompt) -> EncodedPrompt:
        """Close a reasoning block the prompt opened when the request wants none.

        R1-style templates open the reasoning themselves and have no switch: ``think: false``,
        a budget of 0, or a constraint (whose grammar is for the answer) close it in the
        prompt, so the model answers at once.
        """
        none_wanted = request.think is False or request.max_reasoning_tokens == 0
        if not encoded.reasoning_open or not (none_wanted or request.constrained):
            return encoded
        return EncodedPrompt([*encoded.ids, *self.chat_format.close_reasoning], False)

    def _shape(self, request: GenerationRequest, encoded: EncodedPrompt, tools: bool) -> Shape:
        """Decide how the answer is shaped: constraint, markers, reasoning budget."""
        fmt = self.chat_format
        spec = request_spec(
            response_format=_plain(request.response_format), grammar=_plain(request.grammar),
            tools=[_plain(t) for t in request.tools] if request.tools else None,
            tool_choice=_plain(request.tool_choice),
            parallel_tool_calls=request.parallel_tool_calls,
        ) if request.constrained else None
        budget = None if spec else request.max_reasoning_tokens
        return Shape(
            constraint=self.constraints.compile(spec) if spec else None,
            markers=Markers(fmt.markers.think, fmt.markers.tool_call if tools else None),
            reasoning=encoded.reasoning_open,
            max_reasoning_tokens=budget,
            close_reasoning=fmt.close_reasoning,
            marker_texts=fmt.marker_texts,
        )

    def generate_ids(
        self,
        prompt_ids: Ids[int],
        sampling: Sampling,
        *,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
        ignore_eos: bool = False,
    ) -> GenerationResult:
        """Generate from token ids; ``ignore_eos`` keeps going to ``max_tokens`` (benchmarks)."""
        sequence = self._submit(list(prompt_ids), sampling, cancel, now(),
                                streaming=on_delta is not None, ignore_eos=ignore_eos)
        return relay(sequence, on_delta, None)

    def single_sequence(self) -> SingleSequence:
        """Return a sequence driven directly, beside the scheduler, for scoring and checks."""
        return SingleSequence(self.new_slots(1))

    def close(self) -> None:
        self.scheduler.close()

    def _submit(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        cancel: threading.Event | None,
        submitted: float,
        *,
        streaming: bool,
        ignore_eos: bool = False,
        shape: Shape | None = None,
    ) -> Sequence:
        """Check the prompt fits, build its decoding state and hand it to the scheduler.

        A sequence whose caller reads no pieces (``streaming`` false) sends only its end, so
        that the caller's thread does not wake at every token beside the forwards.
        """
        limit = self.context_length
        if len(prompt_ids) >= limit:
            raise ContextLengthExceeded(
                len(prompt_ids),
                limit,
                f"prompt is {len(prompt_ids)} tokens; the model's context holds {limit} "
                f"(prompt and answer together), so the prompt must be under {limit} tokens",
            )
        resolved = resolve(sampling, self.defaults)
        arch = self.manifest.architecture
        decoding = Decoding(
            self.tokenizer,
            prompt_ids,
            resolved,
            eos_ids=arch.eos_token_ids,
            max_new_tokens=min(resolved.max_tokens, limit - len(prompt_ids)),
            vocab_size=arch.vocab_size,
            ignore_eos=ignore_eos,
            shape=shape,
        )
        sequence = Sequence(prompt_ids, decoding, Clock(submitted), cancel, streaming=streaming)
        self.scheduler.submit(sequence)
        return sequence


def _plain(value: Any) -> Any:
    """Return a request field as the plain JSON the constraint compiler reads."""
    if isinstance(value, StrictModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    return value
