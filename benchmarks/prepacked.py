"""Write an optimized-graph cache entry whose data file also holds ONNX Runtime's prepacked weights.

ONNX Runtime repacks the int4 weights into buffers of its own when it creates a session. With
``session.save_external_prepacked_constant_initializers`` the optimized graph it saves carries
those packed buffers in its external data file, and a later load maps them from the file
instead of packing them again into anonymous memory: file-backed, like llama.cpp's weights.
The memory-floor benchmark puts such an entry where edge-runtime's cache looks (the same key
as ``engine/session.py`` computes), so the engine loads it as a cache hit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edge_runtime.engine.options import EngineOptions
from edge_runtime.engine.providers import plan_providers
from edge_runtime.engine.session import CACHED_MODEL, cache_key

DATA_FILE = f"{CACHED_MODEL}.data"
EXTERNAL_MIN_BYTES = 1 << 16


def build_entry(bundle: Path, cache_dir: Path, threads: int) -> Path:
    """Write the prepacked cache entry for ``bundle`` under ``cache_dir``; return its folder."""
    import onnxruntime as ort

    manifest = json.loads((bundle / "manifest.json").read_text())
    model_file = manifest["model_file"]
    sha = manifest["files"][model_file]["sha256"]
    plan = plan_providers(EngineOptions(provider="cpu", threads=threads))
    entry = cache_dir / cache_key(sha, plan)
    shutil.rmtree(entry, ignore_errors=True)
    entry.mkdir(parents=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(entry / CACHED_MODEL)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                DATA_FILE)
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                str(EXTERNAL_MIN_BYTES))
    so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    ort.InferenceSession(str(bundle / model_file), sess_options=so,
                         providers=plan.as_session_args())
    return entry
