"""Load a bundle into an :class:`OnnxEngine`: verify, then session, tokenizer, template, runner."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.bundle.verify import verify_bundle
from edge_runtime.engine.chat_template import ChatTemplate
from edge_runtime.engine.defaults import GenerationDefaults
from edge_runtime.engine.engine import LoadReport, OnnxEngine
from edge_runtime.engine.options import EngineOptions
from edge_runtime.engine.providers import (
    CUDA,
    TENSORRT,
    check_session_providers,
    plan_providers,
)
from edge_runtime.engine.runners import RUNNERS, KvSlots, RunnerClass
from edge_runtime.engine.session import create_session, default_threads
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.errors import BundleError
from edge_runtime.memory import MemoryPolicy, installed

log = logging.getLogger(__name__)


def _runner_class(manifest: Manifest) -> RunnerClass:
    factory = RUNNERS.get(manifest.graph.kind)
    if factory is None:
        raise BundleError(
            f"graph kind {manifest.graph.kind!r} is not supported by this runtime "
            f"(it runs: {', '.join(sorted(RUNNERS))})"
        )
    return factory


def _slot_count(runner: RunnerClass, manifest: Manifest, wanted: int) -> int:
    """Decide, once, how many sequences decode together: ``wanted``, if the graph allows."""
    if wanted > runner.max_slots:
        log.warning("max_batch %d: a %r graph runs %d sequence(s) at a time; serving %d",
                    wanted, manifest.graph.kind, runner.max_slots, runner.max_slots)
    return min(wanted, runner.max_slots)


def _template(root: Path, manifest: Manifest, tokenizer: Tokenizer) -> ChatTemplate | None:
    if not manifest.chat_template_file:
        return None
    arch = manifest.architecture
    bos = tokenizer.token_text(arch.bos_token_id) if arch.bos_token_id is not None else None
    eos = tokenizer.token_text(arch.eos_token_ids[0]) if arch.eos_token_ids else None
    return ChatTemplate.from_file(
        root / manifest.chat_template_file, bos_token=bos or "", eos_token=eos or ""
    )


def load_engine(
    bundle_dir: Path | str, options: EngineOptions | None = None,
    memory: MemoryPolicy | None = None,
) -> OnnxEngine:
    """Verify the bundle at ``bundle_dir`` and load it for generation.

    ``memory`` is the memory policy (edge_runtime/memory.py); None takes the one the process
    installed.

    Raises :class:`BundleError` for a bad bundle, :class:`ProviderUnavailable` when a
    required execution provider is missing, :class:`ModelUnavailable` when onnxruntime
    cannot load the graph.
    """
    options = options or EngineOptions()
    memory = memory or installed()
    started = time.perf_counter()
    root = Path(bundle_dir)
    manifest = verify_bundle(root, check_hashes=options.verify_hashes)
    runner = _runner_class(manifest)
    arch = manifest.architecture
    defaults = GenerationDefaults.from_file(root / manifest.generation_file)
    if options.default_max_tokens is not None:
        defaults = dataclasses.replace(defaults, max_tokens=options.default_max_tokens)
    plan = plan_providers(options)
    model_sha = manifest.files[manifest.model_file].sha256
    session, _, cache_hit = create_session(
        root / manifest.model_file, model_sha, plan, options
    )
    # After the session, not before: the tokenizer's parse frees tens of MB that would sit
    # under ONNX Runtime's peak; the policy's heap trim (after_load) hands them back.
    tokenizer = Tokenizer(
        root / manifest.tokenizer_file, bos_id=arch.bos_token_id, add_bos=arch.add_bos_token
    )
    template = _template(root, manifest, tokenizer)
    memory.after_load()
    active = tuple(session.get_providers())
    check_session_providers(plan, active, options.require)
    device = "cuda" if CUDA in active or TENSORRT in active else "cpu"

    def new_slots(count: int) -> KvSlots:
        return runner(session, manifest, slots=count, device=device, device_id=options.device_id)

    capacity = _slot_count(runner, manifest, options.max_batch)
    report = LoadReport(
        providers=active,
        load_s=time.perf_counter() - started,
        optimized_cache_hit=cache_hit,
        threads=options.threads or default_threads(),
    )
    log.info("loaded %s on %s in %.2fs", manifest.name, active[0], report.load_s)
    return OnnxEngine(
        root, manifest, new_slots, capacity, tokenizer, template, defaults, report,
        prefix_cache_mb=options.prefix_cache_mb,
    )
