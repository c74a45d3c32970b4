"""Create the ONNX Runtime session, reusing a cached optimized graph when there is one.

Optimizing a quantized decoder takes seconds at every start. The first load saves the graph
ONNX Runtime produced (``optimized_model_filepath``); later loads read that with
optimizations off. The highest optimization level bakes in the CPU's layout, so the cache
key holds the model's sha256, the onnxruntime version, the providers and the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import NamedTuple

import onnxruntime as ort

from edge_runtime.engine.options import EngineOptions
from edge_runtime.engine.providers import TENSORRT, ProviderPlan
from edge_runtime.errors import ModelUnavailable

log = logging.getLogger(__name__)

CACHED_MODEL = "model.onnx"
_CACHED_DATA = "model.onnx.data"
# Initializers from this size up go to the data file, mapped at load and then given back
# (engine/mapped_pages.py); smaller ones stay inline, where shape inference needs them.
_EXTERNAL_MIN_BYTES = 1 << 16
_CACHE_FORMAT = "2"  # bumped when what the cache holds changes, so old entries are rebuilt


def cpu_fingerprint() -> str:
    """Describe this CPU (model and feature flags) as a short stable string."""
    facts = [platform.machine()]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("model name", "flags", "features", "cpu part", "cpu implementer"):
                facts.append(line)
                if len(facts) > 4:
                    break
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def cache_key(model_sha256: str, plan: ProviderPlan) -> str:
    """Return the cache entry name for a model under ``plan`` on this machine."""
    parts = [model_sha256, ort.__version__, ",".join(plan.providers), cpu_fingerprint(),
             _CACHE_FORMAT]
    material = "|".join(parts)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def default_threads() -> int:
    """Return how many cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _session_options(options: EngineOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    spin = "1" if options.spin else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return so


def _open(path: Path, so: ort.SessionOptions, plan: ProviderPlan) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=plan.as_session_args())
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelUnavailable(f"onnxruntime cannot load {path.name}: {exc}") from exc


class OpenSession(NamedTuple):
    """A session, the model file it was read from, and whether that is the cached graph."""

    session: ort.InferenceSession
    model_path: Path
    cache_hit: bool


def create_session(
    model_path: Path, model_sha256: str, plan: ProviderPlan, options: EngineOptions
) -> OpenSession:
    """Open ``model_path``, or its optimized graph from the cache when there is one."""
    so = _session_options(options)
    cache_dir = options.optimized_model_dir
    if cache_dir is None or plan.primary == TENSORRT:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return OpenSession(_open(model_path, so, plan), model_path, False)
    entry = Path(cache_dir) / cache_key(model_sha256, plan)
    if (entry / CACHED_MODEL).is_file():
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return OpenSession(_open(entry / CACHED_MODEL, so, plan), entry / CACHED_MODEL, True)
        except ModelUnavailable as exc:
            log.warning("optimized graph cache %s unusable (%s); rebuilding", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
            so = _session_options(options)
    return OpenSession(_build_cached(model_path, entry, options, plan), model_path, False)


def _open_uncached(
    model_path: Path, options: EngineOptions, plan: ProviderPlan
) -> ort.InferenceSession:
    so = _session_options(options)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return _open(model_path, so, plan)


def _build_cached(
    model_path: Path, entry: Path, options: EngineOptions, plan: ProviderPlan
) -> ort.InferenceSession:
    """Open ``model_path`` fully optimized, saving the optimized graph under ``entry``.

    The cache is optional: when it cannot be written (a full or read-only state folder)
    the model is loaded without it, with a warning, and nothing is left behind.
    """
    clean_leftovers(entry.parent)
    staging = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        log.warning("cannot write optimized graph cache %s (%s)", entry.parent, exc)
        return _open_uncached(model_path, options, plan)
    so = _session_options(options)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(staging / CACHED_MODEL)
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", _CACHED_DATA
    )
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", str(_EXTERNAL_MIN_BYTES)
    )
    try:
        session = _open(model_path, so, plan)
    except ModelUnavailable as exc:
        shutil.rmtree(staging, ignore_errors=True)
        log.warning("cannot write optimized graph cache %s (%s); loading without it",
                    entry.parent, " ".join(exc.message.split())[:300])
        return _open_uncached(model_path, options, plan)
    try:
        staging.rename(entry)
    except OSError:  # another process finished first; keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    return session


def clean_leftovers(cache_dir: Path) -> int:
    """Remove the staging folders (``<key>.tmp-<pid>``) of processes that are gone.

    A process that died while writing the cache leaves its staging folder; return how many
    were removed.
    """
    removed = 0
    try:
        entries = list(cache_dir.glob("*.tmp-*"))
    except OSError:
        return 0
    for entry in entries:
        pid = entry.name.rsplit(".tmp-", 1)[1]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += not entry.exists()
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
