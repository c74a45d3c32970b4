"""The edge-runtime command puts the model's weights in transparent huge pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.hugepages import (
    OPT_OUT,
    TUNABLE,
    assess,
    environment_with_tunable,
    glibc_version,
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
        ({OPT_OUT: "0"}, "madvise", GLIBC),  # the user said no
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
    off = assess({OPT_OUT: "0"}, "madvise", GLIBC)
    assert not off.active and OPT_OUT in off.reason


def test_the_kernel_mode_is_read_from_sysfs(tmp_path: Path) -> None:
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert thp_mode(path) == "madvise"
    assert thp_mode(tmp_path / "missing") is None


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    return {**env, **extra}


@needs_thp
def test_the_command_reexecutes_with_the_tunable() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "doctor", "--json"],
        capture_output=True, text=True, timeout=120, env=_env(),
    )
    report = json.loads(proc.stdout)
    found = {c["check"]: c for c in report["checks"]}
    assert found["huge pages"]["status"] == "OK"
    assert found["huge pages"]["summary"] == f"on: GLIBC_TUNABLES={TUNABLE}"


# Started like the edge-runtime command, in its own process: reports the huge pages that
# back the engine after it has loaded and answered.
_SCRIPT = """
import json, re, sys
from pathlib import Path
from edge_runtime.hugepages import reexec_with_huge_pages
reexec_with_huge_pages()
from edge_runtime.engine import EngineOptions, Sampling, load_engine

engine = load_engine(Path(sys.argv[1]), EngineOptions(threads=2))
result = engine.generate_ids(list(range(100, 140)), Sampling(max_tokens=12, temperature=0))
rollup = Path("/proc/self/smaps_rollup").read_text()
huge = int(re.search(r"AnonHugePages:\\s+(\\d+)", rollup).group(1)) / 1024
print(json.dumps({"huge_mb": huge, "tokens": list(result.token_ids)}))
"""


def _huge_pages_run(bundle: Path, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(bundle)],
        capture_output=True, text=True, timeout=600, env=env,
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
    on = _huge_pages_run(bundle, _env())
    off = _huge_pages_run(bundle, _env(**{OPT_OUT: "0"}))
    assert float(on["huge_mb"]) > 0.5 * weights_mb, on  # type: ignore[arg-type]
    assert float(off["huge_mb"]) < 0.1 * weights_mb, off  # type: ignore[arg-type]
    assert on["tokens"] == off["tokens"]
