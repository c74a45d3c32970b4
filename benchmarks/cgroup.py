"""Run a command under a memory limit, as a board's service manager would (cgroup v1).

A child group of ``/sys/fs/cgroup/memory`` gets ``memory.limit_in_bytes`` (and
``memory.memsw.limit_in_bytes`` where the kernel counts swap, so that swap cannot stand in for
memory); the command is moved into it before it executes, so everything it loads, maps and
reads into the page cache is charged to the group. Needs root and the v1 memory controller.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


class CgroupUnavailable(RuntimeError):
    """No writable cgroup v1 memory controller on this machine."""


@dataclass(frozen=True)
class Outcome:
    """How one command ended under its limit."""

    returncode: int | None  # None: stopped at the time bound
    stdout: str
    stderr: str
    max_usage_mb: float
    oom_kills: int
    seconds: float


def available() -> bool:
    """Whether a child memory group can be made here."""
    return (ROOT / "memory.limit_in_bytes").is_file() and os.access(ROOT, os.W_OK)


def drop_page_cache() -> str:
    """Write back dirty pages and empty the page cache; say how (or why not)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as exc:
        return f"not dropped ({exc.strerror}); dirty pages written back only"
    return "sync; echo 3 > /proc/sys/vm/drop_caches"


class MemoryGroup:
    """One child memory group, made on entry and removed on exit."""

    def __init__(self, name: str, limit_mb: int | None) -> None:
        if not available():
            raise CgroupUnavailable(f"no writable cgroup v1 memory controller at {ROOT}")
        self.path = ROOT / name
        self.limit_mb = limit_mb

    def __enter__(self) -> MemoryGroup:
        self.path.mkdir(exist_ok=True)
        if self.limit_mb is not None:
            limit = str(self.limit_mb << 20)
            self._write("memory.limit_in_bytes", limit)
            if (self.path / "memory.memsw.limit_in_bytes").is_file():
                self._write("memory.memsw.limit_in_bytes", limit)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._write("memory.force_empty", "0")
        with contextlib.suppress(OSError):  # a straggler still inside: the next run reuses it
            self.path.rmdir()

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def _read(self, name: str) -> str:
        try:
            return (self.path / name).read_text()
        except OSError:
            return ""

    def _oom_kills(self) -> int:
        for line in self._read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def run(self, cmd: Sequence[str], env: dict[str, str], cwd: Path,
            timeout_s: float) -> Outcome:
        """Run ``cmd`` inside the group, stopped after ``timeout_s``."""
        import time

        procs = str(self.path / "cgroup.procs")

        def enter() -> None:  # runs in the child between fork and exec
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=cwd, preexec_fn=enter)
        try:
            out, err = proc.communicate(timeout=timeout_s)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            code = None
        usage = self._read("memory.max_usage_in_bytes").strip() or "0"
        return Outcome(code, out, err, int(usage) / 2**20, self._oom_kills(),
                       time.perf_counter() - started)
