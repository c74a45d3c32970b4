"""Run a ``gqa`` graph: GroupQueryAttention over preallocated KV buffers, no per-token copies.

The keys and values of every layer live in one numpy array, ``[layers, 2, slots, kv_heads,
capacity, head_dim]`` (pages are only touched as tokens arrive). The graph's
``past_key_values.N.*`` input and ``present.N.*`` output are bound to the same slice of it,
so GroupQueryAttention writes each new token's keys in place. The tokens, the attention
mask and the logits go through small reused buffers.

Memory follows the requests, so that one long prompt does not leave a field device short
for the rest of its uptime: the cache is sized for the request at hand (:meth:`GqaSlots.fit`,
in steps of 256 tokens), grows when a sequence outruns it, and is replaced by a small one
when a much shorter request follows; a prompt is fed in chunks, so that attention's scratch
memory is bounded by the chunk rather than the prompt; and after a long prompt, ONNX
Runtime's arena gives back the scratch memory it grew by.

:class:`GqaSlots` runs several sequences (one per slot) in one forward.

The cache is host memory. With the CUDA or TensorRT provider, ONNX Runtime copies each
bound slice of it to the device for every forward and the updated keys back: the whole
cache crosses the bus at every step, so decoding slows as the context grows there (not
measured: no GPU on the build machines). A device-resident cache needs OrtValues allocated
on the device and a graph that takes the cache in place; see docs/engine.md.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from edge_runtime.errors import ContextLengthExceeded

if TYPE_CHECKING:
    import onnxruntime as ort

    from edge_runtime.bundle.manifest import Manifest

CAPACITY_STEP = 256
"""The cache grows in whole multiples of this many tokens."""
SHRINK_FACTOR = 4
"""``fit`` gives memory back when the cache is at least this many times what is needed."""
LONG_FORWARD = 256
"""After a forward over more tokens than this, ONNX Runtime's arena returns what it grew by."""
PREFILL_CHUNK = 64
"""A prompt is fed in forwards of at most this many tokens per sequence.

Attention over a forward of ``s`` new tokens holds ``heads * s * total`` scores at once, which
for a long prompt in one forward is more memory than a small model. In chunks the scores
and the MLP's activations are bounded by the chunk, at about the same speed.
"""


def lazy_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Return a zeroed array whose memory becomes resident only where it is written.

    An anonymous mapping with transparent huge pages refused: numpy asks for huge pages on
    large arrays, and then the first token written into each (layer, head) plane of the
    cache would make a whole huge page resident.
    """
    count = int(np.prod(shape))
    block = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        block.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(block, dtype=dtype, count=count).reshape(shape)


class GqaSlots:
    """Several sequences sharing one session, each in its own KV slot.

    :meth:`run` feeds ``tokens`` [n, seq] to the contiguous slots ``start .. start+n`` whose
    caches hold ``lengths`` tokens before the call, and returns float32 logits [n, vocab]
    for each row's last token. Callers keep track of the lengths.
    """

    max_slots: ClassVar[int] = 64
    _kv: np.ndarray

    def __init__(
        self,
        session: ort.InferenceSession,
        manifest: Manifest,
        *,
        slots: int = 1,
        device: str = "cpu",
        device_id: int = 0,
        max_length: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if not 1 <= slots <= self.max_slots:
            raise ValueError(f"slots must be 1 to {self.max_slots}, not {slots}")
        self._ort = ort
        self.session = session
        self.spec = manifest.graph
        self.arch = arch = manifest.architecture
        self.slots = slots
        self.max_length = max_length or arch.context_length
        self.vocab_size = arch.vocab_size
        self._logits = np.zeros((slots, 1, arch.vocab_size), np.float32)
        self._ones = np.ones((1, self.max_length), np.int64)
        self._bindings: dict[tuple[int, int], tuple[ort.IOBinding, ort.OrtValue]] = {}
        self._feeds: list[object] = []
        self._release = ort.RunOptions()
        self._release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.capacity = 0
        self._allocate(self._rounded(CAPACITY_STEP), keep=0)

    @property
    def chunk(self) -> int:
        return PREFILL_CHUNK

    def fit(self, length: int) -> None:
        """Size the cache for sequences of up to ``length`` tokens; call with every slot idle.

        A cache much larger than needed (after one long request) is given back to the
        system; one too small is replaced. Slot contents are not kept.
        """
        wanted = self._rounded(max(length, 1))
        if wanted > self.capacity or wanted * SHRINK_FACTOR <= self.capacity:
            self._allocate(wanted, keep=0)

    def reserve(self, length: int) -> None:
        """Make room for ``length`` tokens in every slot, keeping what the slots hold."""
        if length > self.max_length:
            raise ContextLengthExceeded(length, self.max_length)
        if length > self.capacity:
            grown = max(self._rounded(length), min(2 * self.capacity, self.max_length))
            self._allocate(grown, keep=self.capacity)

    def _rounded(self, length: int) -> int:
        return min(-(-length // CAPACITY_STEP) * CAPACITY_STEP, self.max_length)

    def _allocate(self, capacity: int, *, keep: int) -> None:
        a = self.arch
        shape = (a.num_layers, 2, self.slots, a.num_kv_heads, capacity, a.head_dim)
        kv = lazy_zeros(shape, np.dtype(self.spec.kv_dtype))
        if keep:
            kv[..., :keep, :] = self._kv[..., :keep, :]
        self._kv = kv
        self.capacity = capacity
        self._bindings.clear()  # they point into the old buffer

    def _binding(self, start: int, stop: int) -> tuple[ort.IOBinding, ort.OrtValue]:
        """Return the IOBinding with the KV of slots ``start:stop`` bound (built once)."""
        key = (start, stop)
        if key not in self._bindings:
            from_numpy = self._ort.OrtValue.ortvalue_from_numpy
            io = self.session.io_binding()
            for layer in range(self.arch.num_layers):
                k, v = self._kv[layer, 0], self._kv[layer, 1]
                for past, present, buf in (
                    (self.spec.past_key, self.spec.present_key, k),
                    (self.spec.past_value, self.spec.present_value, v),
                ):
                    value = from_numpy(buf[start:stop])
                    io.bind_ortvalue_input(past.format(layer=layer), value)
                    io.bind_ortvalue_output(present.format(layer=layer), value)
            logits = from_numpy(self._logits[: stop - start])
            io.bind_ortvalue_output(self.spec.logits, logits)
            self._bindings[key] = (io, logits)
        return self._bindings[key]

    def _mask(self, lengths: np.ndarray, new: int) -> np.ndarray:
        totals = lengths + new
        if len(totals) == 1:
            return self._ones[:, : int(totals[0])]
        width = int(totals.max())
        return (np.arange(width)[None, :] < totals[:, None]).astype(np.int64)

    def run(
        self, start: int, tokens: np.ndarray, lengths: np.ndarray, *, settle: bool = False
    ) -> np.ndarray:
        """Append ``tokens`` [n, seq] to slots ``start:start+n``; return last logits [n, vocab].

        The tokens go in forwards of at most :data:`PREFILL_CHUNK` per row. Once a slot holds
        tokens, GroupQueryAttention takes several new ones only for a single row (n == 1),
        which is how prompts arrive. ``settle`` hands the arena's growth back afterwards, as
        a call over more than :data:`LONG_FORWARD` tokens does anyway (for the last piece of
        a long prompt fed a chunk per call).
        """
        n, new = tokens.shape
        if start < 0 or start + n > self.slots:
            raise IndexError(f"slots {start}..{start + n} out of 0..{self.slots}")
        lengths = np.asarray(lengths, dtype=np.int64)
        self.reserve(int(lengths.max()) + new)
        io, _ = self._binding(start, start + n)
        for first in range(0, new, PREFILL_CHUNK):
            chunk = tokens[:, first : first + PREFILL_CHUNK]
            last = first + chunk.shape[1] == new
            # A long prompt's activations would otherwise stay in the arena for good.
            release = last and (settle or n * new > LONG_FORWARD)
            self._forward(io, chunk, lengths + first, release)
        return self._logits[:n, 0]

    def _forward(
        self, io: ort.IOBinding, tokens: np.ndarray, lengths: np.ndarray, release: bool
    ) -> None:
        from_numpy = self._ort.OrtValue.ortvalue_from_numpy
        # The OrtValues borrow the arrays' memory: keep both alive until the next run.
        ids = np.ascontiguousarray(tokens, dtype=np.int64)
        mask = self._mask(lengths, ids.shape[1])
        self._feeds = [from_numpy(ids), from_numpy(mask), ids, mask]
        io.bind_ortvalue_input(self.spec.input_ids, self._feeds[0])
        io.bind_ortvalue_input(self.spec.attention_mask or "attention_mask", self._feeds[1])
        self.session.run_with_iobinding(io, self._release if release else None)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` cached tokens of slot ``src`` into slot ``dst``."""
        self._kv[:, :, dst, :, :length] = self._kv[:, :, src, :, :length]

    @property
    def token_bytes(self) -> int:
        """The KV size of one position: every layer's keys and values."""
        a = self.arch
        return a.num_layers * 2 * a.num_kv_heads * a.head_dim * self._kv.dtype.itemsize

    def read(self, slot: int, start: int, stop: int) -> np.ndarray:
        """Return a copy of positions ``start:stop`` of ``slot``, [layers, 2, kv_heads, n, dim].

        The copy has its own mapping, so that dropping it gives its memory back at once
        (from malloc's heap, blocks freed in any order would leave holes that stay resident).
        """
        part = self._kv[:, :, slot, :, start:stop]
        copy = lazy_zeros(part.shape, part.dtype)
        copy[...] = part
        return copy

    def write(self, slot: int, start: int, kv: np.ndarray) -> None:
        """Put ``kv`` (as :meth:`read` returns it) at positions ``start:`` of ``slot``."""
        stop = start + kv.shape[3]
        self.reserve(stop)
        self._kv[:, :, slot, :, start:stop] = kv
