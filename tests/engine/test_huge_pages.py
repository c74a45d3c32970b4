"""A memory policy with huge pages puts the model's weights in transparent huge pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.hugepages import (
    TUNABLE,
    assess,
    environment_with_tunable,
    glibc_version,
    huge_page_size,
    thp_mode,
)

GLIBC = (2, 36)
HERE_SUPPORTED = thp_mode() == "madvise" and (glibc_version() or (0,)) >= (2, 35)
needs_thp = pytest.mark.skipif(
    not HERE_SUPPORTED, reason="needs a kernel in THP madvise mode and glibc >= 2.35"
)


def test_the_tunable_is_added_where_it_pays() -> None:
    env = environment_with_tunable({"PATH": "/bin"}, "madvise", GLIBC)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLE}


def test_other_glibc_tunables_are_kept() -> None:
    env = environment_with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", GLIBC)
    assert env is not None
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"


@pytest.mark.parametrize(
    ("environ", "mode", "glibc"),
    [
        ({"GLIBC_TUNABLES": TUNABLE}, "madvise", GLIBC),  # already there: no loop
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC),  # the user's own choice
        ({}, "always", GLIBC),  # the kernel already gives huge pages
        ({}, "never", GLIBC),
        ({}, None, GLIBC),  # not Linux, or no THP
        ({}, "madvise", (2, 31)),  # glibc without the tunable
        ({}, "madvise", None),  # musl
    ],
)
def test_no_reexecution_where_it_cannot_help(
    environ: dict[str, str], mode: str | None, glibc: tuple[int, ...] | None
) -> None:
    assert environment_with_tunable(environ, mode, glibc) is None


def test_the_reason_is_reported() -> None:
    assert assess({"GLIBC_TUNABLES": TUNABLE}, "madvise", GLIBC).active
    assert not assess({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC).active
    assert assess({}, "always", None).active
    off = assess({}, "madvise", (2, 31))
    assert not off.active and "glibc 2.35" in off.reason


@pytest.mark.parametrize("size", [32 << 20, 512 << 20])  # 16 KiB and 64 KiB base pages
def test_huge_pages_larger_than_2_mib_are_not_asked_for(size: int) -> None:
    """On the Raspberry Pi 5's 16 KiB-page kernel a huge page is 32 MiB: malloc would hold
    far more memory than it uses."""
    assert environment_with_tunable({}, "madvise", GLIBC, size) is None
    state = assess({}, "madvise", GLIBC, size)
    assert not state.active and f"{size >> 20} MiB" in state.reason


def test_the_huge_page_size_is_read_from_sysfs(tmp_path: Path) -> None:
    path = tmp_path / "hpage_pmd_size"
    path.write_text("33554432\n")
    assert huge_page_size(path) == 32 << 20
    assert huge_page_size(tmp_path / "missing") is None


def test_the_kernel_mode_is_read_from_sysfs(tmp_path: Path) -> None:
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert thp_mode(path) == "madvise"
    assert thp_mode(tmp_path / "missing") is None


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}


# Installs a policy as `edge-runtime serve` does, then says what the process ended up with.
_INSTALL = """
import os, sys
print("started", os.getpid(), flush=True)
from edge_runtime.memory import MemoryPolicy, install
install(MemoryPolicy(huge_pages=sys.argv[1] == "on"))
print("running", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), flush=True)
"""


@needs_thp
@pytest.mark.parametrize("wanted", ["on", "off"])
def test_the_process_reexecutes_once_when_its_policy_wants_huge_pages(wanted: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _INSTALL, wanted], capture_output=True,
                          text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    lines = [line.split(" ", 2) for line in proc.stdout.splitlines()]
    starts = [fields[1] for fields in lines if fields[0] == "started"]
    (running,) = [fields for fields in lines if fields[0] == "running"]
    assert len(starts) == (2 if wanted == "on" else 1)
    assert set(starts) == {running[1]}  # the same process, replaced by itself
    assert running[2:] == ([TUNABLE] if wanted == "on" else [""])


# Started as the service is, in its own process: reports the huge pages that back the
# engine after it has loaded and answered.
_SCRIPT = """
import json, re, sys
from pathlib import Path
from edge_runtime.memory import MemoryPolicy, install
install(MemoryPolicy(huge_pages=sys.argv[2] == "on"))
from edge_runtime.engine import EngineOptions, Sampling, load_engine

engine = load_engine(Path(sys.argv[1]), EngineOptions(threads=2))
result = engine.generate_ids(list(range(100, 140)), Sampling(max_tokens=12, temperature=0))
rollup = Path("/proc/self/smaps_rollup").read_text()
huge = int(re.search(r"AnonHugePages:\\s+(\\d+)", rollup).group(1)) / 1024
print(json.dumps({"huge_mb": huge, "tokens": list(result.token_ids)}))
"""


def _huge_pages_run(bundle: Path, wanted: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(bundle), wanted],
        capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@needs_thp
@pytest.mark.slow
@pytest.mark.real_model
def test_the_weights_sit_in_huge_pages_and_answers_do_not_change(
    smollm2_bundle: Callable[..., Path],
) -> None:
    bundle = smollm2_bundle("int4")
    weights_mb = (bundle / "model.onnx.data").stat().st_size / 2**20
    on = _huge_pages_run(bundle, "on")
    off = _huge_pages_run(bundle, "off")
    assert float(on["huge_mb"]) > 0.5 * weights_mb, on  # type: ignore[arg-type]
    assert float(off["huge_mb"]) < 0.1 * weights_mb, off  # type: ignore[arg-type]
    assert on["tokens"] == off["tokens"]
