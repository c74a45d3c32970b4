"""Save the prefix cache to a file at stop and read it back at start, for the same bundle only.

The file holds a JSON header (format, the cache's key, and each block's parent and tokens,
parents first) and then every block's KV bytes in the same order. The key is the bundle's
manifest hash (which covers every file's sha256), ONNX Runtime's version and the CPU's
fingerprint: other kernels can round differently, and a restored block must hold exactly
what a cold read computes here. A file with another key, or that cannot be read, is ignored
(and replaced at the next stop). It is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edge_runtime.engine.prefix_cache import Block, PrefixCache
from edge_runtime.engine.runners.gqa import lazy_zeros

log = logging.getLogger(__name__)

MAGIC = b"EDGE-RUNTIME-PREFIX-CACHE\n"
VERSION = 1


def cache_key(manifest_path: Path) -> str:
    """Return the key a saved cache must carry to be read back with this bundle here."""
    import onnxruntime as ort

    from edge_runtime.engine.session import cpu_fingerprint

    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    parts = [digest, ort.__version__, cpu_fingerprint()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def save(cache: PrefixCache, path: Path, key: str) -> int:
    """Write every block of ``cache`` to ``path``; return how many blocks were written."""
    blocks = list(cache.walk())
    index = {id(block): i for i, block in enumerate(blocks)}
    first = blocks[0].kv if blocks else None
    header: dict[str, Any] = {
        "version": VERSION,
        "key": key,
        "dtype": str(first.dtype) if first is not None else "",
        "shape": [*first.shape[:3], first.shape[4]] if first is not None else [],
        "blocks": [
            [index.get(id(b.parent), -1), list(b.tokens)] for b in blocks
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as fh:
        _write_header(fh, header)
        for block in blocks:
            fh.write(np.ascontiguousarray(block.kv).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)
    return len(blocks)


def _write_header(fh: BinaryIO, header: dict[str, Any]) -> None:
    data = json.dumps(header, separators=(",", ":")).encode()
    fh.write(MAGIC)
    fh.write(struct.pack("<Q", len(data)))
    fh.write(data)


def restore(cache: PrefixCache, path: Path, key: str) -> int:
    """Read the blocks saved at ``path`` into ``cache``, within its bound; return how many.

    The file is read whole before any block goes in: a missing file, another key or a
    damaged file gives 0 and leaves the cache as it was.
    """
    if not path.is_file():
        return 0
    try:
        with open(path, "rb") as fh:
            header = _read_header(fh)
            if header.get("version") != VERSION or header.get("key") != key:
                log.info("prefix cache: %s is for another bundle or runtime; not used", path)
                return 0
            blocks = _read_blocks(fh, header, cache.token_bytes, cache.budget)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("prefix cache: cannot read %s (%s); not used", path, exc)
        return 0
    placed: list[Block | None] = []
    for parent, tokens, kv in blocks:
        above = placed[parent] if parent >= 0 else None
        fits = parent < 0 or above is not None  # a block whose parent did not fit does not
        placed.append(cache.attach(above, tokens, kv) if fits else None)
    return sum(block is not None for block in placed)


def _read_header(fh: BinaryIO) -> dict[str, Any]:
    if fh.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a prefix cache file")
    (size,) = struct.unpack("<Q", fh.read(8))
    header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        raise ValueError("bad header")
    return header


def _read_blocks(
    fh: BinaryIO, header: dict[str, Any], token_bytes: int, budget: int
) -> list[tuple[int, tuple[int, ...], np.ndarray]]:
    """Read (parent index, tokens, KV) of the saved blocks, up to ``budget`` bytes of KV."""
    dtype = np.dtype(header["dtype"]) if header["blocks"] else np.dtype(np.float32)
    layers, pair, heads, dim = (int(n) for n in header["shape"] or (0, 0, 0, 0))
    out: list[tuple[int, tuple[int, ...], np.ndarray]] = []
    held = 0
    for parent, tokens in header["blocks"]:
        count = len(tokens)
        size = layers * pair * heads * count * dim * dtype.itemsize
        if count * token_bytes != size or not -1 <= int(parent) < len(out):
            raise ValueError("KV of another shape, or blocks out of order")
        if held + size > budget:
            break
        data = fh.read(size)
        if len(data) != size:
            raise ValueError("truncated")
        kv = lazy_zeros((layers, pair, heads, count, dim), dtype)
        kv[...] = np.frombuffer(data, dtype).reshape(kv.shape)
        out.append((int(parent), tuple(int(t) for t in tokens), kv))
        held += size
    return out
