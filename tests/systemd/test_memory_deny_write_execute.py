"""MemoryDenyWriteExecute=yes is safe for the CPU provider: generation works under it.

The unit sets MemoryDenyWriteExecute=yes. The same rule can be applied to one process with
prctl(PR_SET_MDWE) (Linux 6.3+); a child process does that, then loads a real int4 bundle with
onnxruntime and generates. Skipped on kernels without PR_SET_MDWE.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

CHILD = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(65, 1, 0, 0, 0) == 0, "PR_SET_MDWE failed"
try:  # prove the rule is in force: a writable+executable mapping must now be refused
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping was allowed: MDWE not in force")
except PermissionError:
    pass
from edge_runtime.engine import EngineOptions, load_engine
from edge_runtime.engine import GenerationRequest
engine = load_engine(sys.argv[1], EngineOptions(provider="cpu", threads=1))
result = engine.generate(GenerationRequest(prompt="hello", chat=False, max_tokens=8, temperature=0))
print(result.usage.completion_tokens)
"""


def _mdwe_supported() -> bool:
    # Probe in a child: the rule cannot be lifted once set.
    code = "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


@pytest.fixture(scope="module")
def int4_bundle(
    converter_cache: Path, tiny_hf_model: Callable[..., Path], tiny_bundle: Callable[..., Path]
) -> Path:
    """Return a tiny int4 bundle in the default graph, or the optimum one if not yet runnable."""
    from edge_runtime.engine.runners import RUNNERS

    if "gqa" in RUNNERS:
        return tiny_bundle("llama", "int4")
    out = converter_cache / "bundle-tiny-llama-int4-optimum"
    if not (out / "manifest.json").is_file():
        from converters import ConvertOptions, convert

        convert(tiny_hf_model("llama"), out,
                ConvertOptions(quant="int4", graph="optimum", overwrite=True))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_cpu_generation_works_without_writable_executable_memory(int4_bundle: Path) -> None:
    if not _mdwe_supported():
        pytest.skip(f"kernel {os.uname().release} has no PR_SET_MDWE")
    bundle = int4_bundle
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 0
