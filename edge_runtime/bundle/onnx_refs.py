"""Find the external data an ONNX model refers to, without the onnx package.

The device half does not depend on ``onnx``; this walks just enough of the protobuf wire
format (model -> graph -> initializers, nodes and node attribute tensors) to read each
tensor's ``external_data`` entries: which files a bundle needs (:func:`external_data_locations`).
Weights are skipped by length, never copied.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from edge_runtime.errors import BundleError

_T = TypeVar("_T")

# Field numbers from onnx.proto.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_GRAPHS, _ATTR_TENSORS = 5, 6, 10, 11
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA = 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """Yield (field number, payload) for each field; payload is None unless length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            yield number, None
        elif wire == 1:
            pos += 8
            yield number, None
        elif wire == 5:
            pos += 4
            yield number, None
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            yield number, buf[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _external_data(tensor: memoryview) -> dict[str, str]:
    """Return a tensor's ``external_data`` entries (location, offset, length ...)."""
    found: dict[str, str] = {}
    for number, payload in _fields(tensor):
        if number != _TENSOR_EXTERNAL_DATA or payload is None:
            continue
        entry = {n: bytes(p) for n, p in _fields(payload) if p is not None}
        key = entry.get(_ENTRY_KEY, b"").decode("utf-8", errors="replace")
        found[key] = entry.get(_ENTRY_VALUE, b"").decode("utf-8", errors="replace")
    return found


def _tensor_locations(tensor: memoryview) -> Iterator[str]:
    location = _external_data(tensor).get("location")
    if location is not None:
        yield location


def _graph_locations(graph: memoryview) -> Iterator[str]:
    for number, payload in _fields(graph):
        if payload is None:
            continue
        if number == _GRAPH_INITIALIZER:
            yield from _tensor_locations(payload)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            for sub, part in _fields(payload):
                if sub in (_SPARSE_VALUES, _SPARSE_INDICES) and part is not None:
                    yield from _tensor_locations(part)
        elif number == _GRAPH_NODE:
            yield from _node_locations(payload)


def _node_locations(node: memoryview) -> Iterator[str]:
    for number, attr in _fields(node):
        if number != _NODE_ATTRIBUTE or attr is None:
            continue
        for sub, part in _fields(attr):
            if part is None:
                continue
            if sub in (_ATTR_T, _ATTR_TENSORS):
                yield from _tensor_locations(part)
            elif sub in (_ATTR_G, _ATTR_GRAPHS):
                yield from _graph_locations(part)


def _scan(buf: memoryview) -> set[str]:
    found: set[str] = set()
    for number, payload in _fields(buf):
        if number == _MODEL_GRAPH and payload is not None:
            found.update(_graph_locations(payload))
    return found


def external_data_locations(model_path: Path) -> set[str]:
    """Return every external-data ``location`` named by the model at ``model_path``."""
    return _read(model_path, _scan)


def _read(model_path: Path, scan: Callable[[memoryview], _T]) -> _T:
    """Map the model file and run ``scan`` over its bytes."""
    with open(model_path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            raise BundleError("empty ONNX file", model_path)
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return scan(memoryview(mapped))
    except ValueError as exc:
        raise BundleError(f"not a readable ONNX model ({exc})", model_path) from exc
    finally:
        # Views taken from the map may still be referenced by a traceback; the map is
        # released when they are collected.
        with contextlib.suppress(BufferError):
            mapped.close()
