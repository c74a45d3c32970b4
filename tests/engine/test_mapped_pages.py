"""Pages of the model files that ONNX Runtime mapped are given back after loading."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_runtime.engine import EngineOptions, Sampling, load_engine, mapped_pages
from edge_runtime.engine.mapped_pages import (
    mappings,
    read_on_demand,
    release_file_pages,
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


def test_clean_pages_are_dropped_and_read_back_unchanged(
    mapped: tuple[Path, mmap.mmap],
) -> None:
    path, view = mapped
    assert resident(path) == SIZE
    assert release_file_pages([path.parent]) == SIZE
    assert resident(path) == 0
    assert view[:] == path.read_bytes()


def test_a_mapping_with_written_pages_is_left_alone(mapped: tuple[Path, mmap.mmap]) -> None:
    path, view = mapped
    view[5] = (view[5] + 1) % 256  # a private copy of this page now differs from the file
    written = view[:]
    assert release_file_pages([path.parent]) == 0
    assert view[:] == written
    assert resident(path) == SIZE


def test_files_elsewhere_are_left_alone(mapped: tuple[Path, mmap.mmap], tmp_path: Path) -> None:
    path, _ = mapped
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert release_file_pages([other]) == 0
    assert resident(path) == SIZE


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


@pytest.mark.slow
@pytest.mark.real_model
def test_the_loaded_model_keeps_no_file_pages_and_answers_the_same(
    smollm2_bundle: Callable[..., Path],
) -> None:
    bundle = smollm2_bundle("int4").resolve()

    def bundle_rss() -> int:
        return sum(m.rss for m in mappings() if m.path.startswith(f"{bundle}/"))

    after_load, after_answer, kept = _released_then_kept(
        bundle, bundle_rss, MemoryPolicy(release_model_pages=True)
    )
    assert after_answer < 2 * 2**20, "the kernels read the released pages back"
    # The scales of SmolLM2's int4 weights alone are 16 MB.
    assert kept - after_load > 10 * 2**20


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


@pytest.mark.slow
@pytest.mark.real_model
def test_the_optimized_graph_cache_is_given_back_too(
    smollm2_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    """The daemon loads from its optimized-graph cache; the weights there are mapped too."""
    bundle = smollm2_bundle("int4").resolve()
    cache = tmp_path / "ort-cache"
    options = EngineOptions(threads=2, optimized_model_dir=cache)
    policy = MemoryPolicy(release_model_pages=True)
    load_engine(bundle, options, policy)  # builds the cache
    engine = load_engine(bundle, options, policy)
    assert engine.report.optimized_cache_hit
    engine.generate_ids(list(range(200, 260)), Sampling(max_tokens=8, temperature=0.0))
    (data,) = cache.glob("*/model.onnx.data")
    # Inline initializers would sit on the heap for good: all but the tiny ones are external.
    assert data.stat().st_size > 0.97 * (bundle / "model.onnx.data").stat().st_size
    assert sum(m.rss for m in mappings() if m.path.startswith(f"{cache}/")) < 2 * 2**20


def _touch(view: mmap.mmap, first: int, every: int) -> bytes:
    """Read one byte of every ``every``-th page, from page ``first`` on."""
    return bytes(view[page * mmap.PAGESIZE] for page in range(first, len(view) // mmap.PAGESIZE,
                                                            every))


def _in_memory_filesystem(path: Path) -> bool:
    """Whether ``path`` lies on tmpfs or ramfs, whose pages cannot leave the page cache."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind in ("tmpfs", "ramfs")


def test_a_table_read_on_demand_takes_a_page_per_read(tmp_path: Path) -> None:
    """A row read from a mapped table makes that page resident, not its neighbours too."""
    if _in_memory_filesystem(tmp_path):
        pytest.skip("a tmpfs file's pages stay in the page cache")
    pages, every = 1024, 16  # 4 MB, a byte read from every 64 KB
    path = tmp_path / "table.bin"
    content = os.urandom(pages * mmap.PAGESIZE)
    # In the page cache and still dirty, as a bundle converted a moment ago is.
    path.write_bytes(content)
    with path.open("rb") as f:
        view = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    try:
        _touch(view, 0, every)
        if resident(path) < 4 * (pages // every) * mmap.PAGESIZE:
            pytest.skip("this kernel maps no neighbouring pages on a read fault")
        release_file_pages([tmp_path])
        start = 3 * mmap.PAGESIZE
        assert read_on_demand(path, start, len(content) - start) == len(content) - start
        read = _touch(view, 5, every)  # other pages than before, all in the advised range
        assert read == content[5 * mmap.PAGESIZE :: every * mmap.PAGESIZE]
        assert resident(path) <= 2 * (pages // every) * mmap.PAGESIZE
    finally:
        view.close()


def test_only_the_mappings_of_that_file_are_advised(mapped: tuple[Path, mmap.mmap]) -> None:
    path, _ = mapped
    assert read_on_demand(path.with_name("other.bin"), 0, SIZE) == 0
    assert read_on_demand(path, SIZE, SIZE) == 0  # past the mapped bytes


@pytest.mark.slow
@pytest.mark.real_model
def test_embedding_rows_cost_a_page_each(smollm2_bundle: Callable[..., Path]) -> None:
    """Tokens spread over the vocabulary read SmolLM2's 17 MB table; little of it stays."""
    bundle = smollm2_bundle("int4").resolve()
    if _in_memory_filesystem(bundle):
        pytest.skip("a tmpfs file's pages stay in the page cache")
    engine = load_engine(bundle, EngineOptions(threads=2), MemoryPolicy(release_model_pages=True))
    prompt = [(i * 7919) % 49000 + 100 for i in range(150)]
    engine.generate_ids(prompt, Sampling(max_tokens=16, temperature=0.0))
    resident_mb = sum(m.rss for m in mappings() if m.path.startswith(f"{bundle}/")) / 2**20
    # 166 rows and their scales, a page each: under 1.5 MB. With the kernel's fault-around
    # and read-ahead each row brought in 64 KB: the whole table.
    assert resident_mb < 3, resident_mb


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


def test_a_model_whose_tables_cannot_be_found_still_loads(
    tiny_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reading rows a page at a time saves memory; failing to set it up must not stop serving."""
    from edge_runtime.bundle import onnx_refs
    from edge_runtime.errors import BundleError

    def unreadable(path: Path) -> list[object]:
        raise BundleError("not a readable ONNX model (truncated field)", path)

    monkeypatch.setattr(onnx_refs, "gathered_spans", unreadable)
    policy = MemoryPolicy(release_model_pages=True)
    engine = load_engine(tiny_bundle("llama", "int4"), EngineOptions(threads=1), policy)
    answer = engine.generate_ids([5, 6, 7], Sampling(max_tokens=3), ignore_eos=True)
    assert len(answer.token_ids) == 3
    assert "gathered tables" in caplog.text


def test_rows_are_advised_in_whole_pages_of_the_kernels_size(
    mapped: tuple[Path, mmap.mmap], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 16 KiB-page kernel (the Raspberry Pi 5's): advice starts on a 16 KiB boundary."""
    path, _ = mapped
    monkeypatch.setattr(mapped_pages, "page_size", lambda: 16384)
    offset = 5 * 4096  # inside the second 16 KiB page
    assert read_on_demand(path, offset, SIZE - offset) == SIZE - 16384


def test_the_page_cache_is_dropped_in_whole_huge_pages_of_the_kernels_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 16 KiB pages a huge page, and so the largest folio, is 32 MiB, not 2 MiB."""
    path = tmp_path / "table.bin"
    path.write_bytes(b"\0" * 4096)
    dropped: list[tuple[int, int]] = []
    monkeypatch.setattr(mapped_pages, "huge_page_size", lambda: 32 << 20)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, start, length, advice:
                        dropped.append((start, length)))
    mapped_pages._drop_cached(str(path), (40 << 20) + 5, 100)
    assert dropped == [(32 << 20, 32 << 20)]
