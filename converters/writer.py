"""Write a bundle atomically: build it in a hidden sibling folder, rename into place when whole."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from converters.errors import DiskFull, OutputError
from edge_runtime.bundle import MANIFEST_NAME, FileEntry, Manifest, sha256_file


def check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty existing output unless ``overwrite``; check the parent is writable."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(f"{out_dir}: exists and is not empty (use --force to replace it)")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".edge-runtime-probe-"):
            pass
    except OSError as exc:
        raise os_error(exc, parent) from exc


def os_error(exc: OSError, where: Path) -> OutputError:
    """Turn an OSError while writing into one clear converter error."""
    if exc.errno == errno.ENOSPC:
        return DiskFull(f"{where}: no space left on the device")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{where}: folder is not writable ({exc.strerror})")
    return OutputError(f"{where}: cannot write ({exc.strerror or exc})")


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh hidden sibling of ``out_dir``; it is removed unless renamed away."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as exc:
        raise os_error(exc, out_dir.parent) from exc
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def file_entries(stage: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file in the staging folder except the manifest."""
    return {
        p.name: FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
        for p in sorted(stage.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }


def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_manifest(stage: Path, manifest: Manifest) -> None:
    """Write manifest.json last, via a temporary name, so it only exists when complete."""
    tmp = stage / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.rename(stage / MANIFEST_NAME)


def move_into_place(stage: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished ``stage`` (old content removed only at the end)."""
    old: Path | None = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{stage.name[-8:]}")
        out_dir.rename(old)
    stage.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
