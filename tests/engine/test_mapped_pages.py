"""Library code and malloc's free pages are given back after loading."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_runtime.engine import EngineOptions, Sampling, load_engine
from edge_runtime.engine.mapped_pages import (
    mappings,
    release_read_only_pages,
)
from edge_runtime.memory import OFF, MemoryPolicy

SIZE = 64 * mmap.PAGESIZE
pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux")


@pytest.fixture
def mapped(tmp_path: Path) -> Iterator[tuple[Path, mmap.mmap]]:
    """A file mapped private and writable, as ONNX Runtime maps external data, all read."""
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(SIZE))
    with path.open("rb") as f:
        view = mmap.mmap(f.fileno(), SIZE, flags=mmap.MAP_PRIVATE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    assert view[:] == path.read_bytes()  # every page resident now
    yield path, view
    view.close()


def resident(path: Path) -> int:
    return sum(m.rss for m in mappings() if m.path == str(path))


def _released_then_kept(
    bundle: Path, measure: Callable[[], int], on: MemoryPolicy
) -> tuple[int, int, int]:
    """Load and answer under the policy ``on``, then load again with the policy off and check
    that the answer is the same. Returns ``measure()`` after the first load, after its
    answer, and after the second load."""
    params = Sampling(max_tokens=24, temperature=0.0)
    prompt = list(range(200, 260))
    released = load_engine(bundle, EngineOptions(threads=2), on)
    after_load = measure()
    answer = released.generate_ids(prompt, params).token_ids
    after_answer = measure()
    del released
    kept = load_engine(bundle, EngineOptions(threads=2), OFF)
    kept_after_load = measure()
    assert kept.generate_ids(prompt, params).token_ids == answer
    return after_load, after_answer, kept_after_load


def test_read_only_pages_are_dropped_and_read_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "code.bin"
    path.write_bytes(os.urandom(SIZE))
    with path.open("rb") as f:
        view = mmap.mmap(f.fileno(), SIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    try:
        assert view[:] == path.read_bytes()
        assert resident(path) == SIZE
        assert release_read_only_pages() >= SIZE
        assert resident(path) == 0
        assert view[:] == path.read_bytes()
    finally:
        view.close()


def test_writable_mappings_are_not_read_only_pages(mapped: tuple[Path, mmap.mmap]) -> None:
    """Another thread could write to them between the check and the drop."""
    path, _ = mapped
    release_read_only_pages()
    assert resident(path) == SIZE


@pytest.mark.slow
@pytest.mark.real_model
def test_loading_leaves_little_library_code_resident_and_answers_the_same(
    smollm2_bundle: Callable[..., Path],
) -> None:
    bundle = smollm2_bundle("int4").resolve()

    def runtime_code() -> int:
        return sum(m.rss for m in mappings() if m.read_only and "onnxruntime" in m.path)

    after_load, after_answer, kept = _released_then_kept(
        bundle, runtime_code, MemoryPolicy(release_code=True)
    )
    assert after_answer > after_load, "what an answer runs comes back on first touch"
    # Parsing and optimizing the graph alone leave more than 10 MB of the runtime's code.
    assert kept - after_load > 10 * 2**20


def _rss_anon() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("RssAnon:"))) * 1024


def test_freed_heap_pages_are_handed_back() -> None:
    import ctypes
    import ctypes.util

    from edge_runtime.engine.mapped_pages import trim_heap

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = 64 * 1024  # under malloc's mmap threshold: these come from the heap
    blocks = [libc.malloc(block) for _ in range(1024)]
    for address in blocks:
        ctypes.memset(address, 1, block)
    freed, kept = blocks[0::2], blocks[1::2]
    for address in freed:  # holes between live blocks: free() alone cannot shrink the heap
        libc.free(address)
    before = _rss_anon()
    assert trim_heap()
    assert before - _rss_anon() > 16 * 2**20  # of the 32 MB written and freed
    for address in kept:
        libc.free(address)
