"""Runner for graphs exported by optimum: past/present KV tensors grown by concatenation.

The KV cache never passes through numpy: ONNX Runtime allocates each step's ``present``
outputs (on the device that runs the graph) and those OrtValues are bound as the next
step's ``past`` inputs as they are. Only the logits come back to the host, and with a
``logits_last_only`` graph only the last position's.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnxruntime as ort

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.errors import BundleError, ContextLengthExceeded

_KV_DTYPES = {"float32": np.float32, "float16": np.float16}
MIN_ONNXRUNTIME = (1, 30)
"""Older onnxruntime crashes the process on this graph's first forward (docs/aarch64.md)."""
PREFILL_CHUNK = 128
"""A prompt is fed in forwards of at most this many tokens.

Attention over a forward holds ``heads * new * total`` scores at once; in chunks they are
bounded by the chunk. Twice the gqa runner's chunk: here each forward copies the whole cache
into its ``present`` outputs, so every chunk costs a copy of the cache so far (the measured
trade-off is in docs/benchmarks.md).
"""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _layer_names(template: str, layers: int) -> list[str]:
    return [template.format(layer=i) for i in range(layers)]


class OptimumSlots:
    """One sequence on an optimum decoder graph, with its KV cache kept in ORT buffers.

    The graph concatenates the cache at every step, so there is one slot: bundles with this
    graph kind serve one request at a time.
    """

    max_slots: ClassVar[int] = 1
    slots = 1
    chunk = PREFILL_CHUNK

    def __init__(
        self,
        session: ort.InferenceSession,
        manifest: Manifest,
        *,
        slots: int = 1,
        device: str = "cpu",
        device_id: int = 0,
    ) -> None:
        if slots != 1:
            raise ValueError("the optimum graph runs one sequence at a time")
        if _version(ort.__version__) < MIN_ONNXRUNTIME:
            raise BundleError(
                f"onnxruntime {ort.__version__} crashes on bundles with the optimum graph; "
                f"install onnxruntime>={'.'.join(map(str, MIN_ONNXRUNTIME))} or convert the "
                "model with the default (gqa) graph"
            )
        spec, arch = manifest.graph, manifest.architecture
        if spec.kv_dtype not in _KV_DTYPES:
            raise BundleError(f"graph kv_dtype {spec.kv_dtype!r} is not supported")
        self._session = session
        self._spec = spec
        self._device, self._device_id = device, device_id
        self._kv_dtype = _KV_DTYPES[spec.kv_dtype]
        self._kv_shape = (1, arch.num_kv_heads, 0, arch.head_dim)
        self._max_length = arch.context_length
        self._past_names = [
            name
            for pair in zip(
                _layer_names(spec.past_key, arch.num_layers),
                _layer_names(spec.past_value, arch.num_layers),
                strict=True,
            )
            for name in pair
        ]
        self._present_names = [
            name
            for pair in zip(
                _layer_names(spec.present_key, arch.num_layers),
                _layer_names(spec.present_value, arch.num_layers),
                strict=True,
            )
            for name in pair
        ]
        self._check_graph()
        self._mask = np.ones((1, self._max_length), dtype=np.int64)
        self._positions = np.arange(self._max_length, dtype=np.int64)[None, :]
        self._binding = session.io_binding()
        self._past: list[ort.OrtValue] = []
        self._length = 0
        self._reset()

    def _check_graph(self) -> None:
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        wanted_in = [self._spec.input_ids, *self._past_names]
        wanted_in += [n for n in (self._spec.attention_mask, self._spec.position_ids) if n]
        missing = [n for n in wanted_in if n not in inputs]
        missing += [n for n in [self._spec.logits, *self._present_names] if n not in outputs]
        if missing:
            raise BundleError(
                f"the model graph lacks what the manifest names: {', '.join(missing[:6])}"
            )

    @property
    def max_length(self) -> int:
        return self._max_length

    def fit(self, length: int) -> None:
        # The cache is concatenated step by step: there is nothing to size in advance.
        self.reserve(length)

    def reserve(self, length: int) -> None:
        if length > self._max_length:
            raise ContextLengthExceeded(length, self._max_length)

    def move(self, src: int, dst: int, length: int) -> None:
        if src != dst:
            raise IndexError("the optimum graph has one slot")

    def run(
        self, start: int, tokens: np.ndarray, lengths: np.ndarray, *, settle: bool = False
    ) -> np.ndarray:
        """Append ``tokens`` [1, seq] to the one slot, which holds ``lengths[0]`` tokens now."""
        if start != 0 or tokens.shape[0] != 1:
            raise IndexError("the optimum graph has one slot")
        held = int(lengths[0])
        if held == 0:
            self._reset()
        elif held != self._length:
            raise ValueError(f"slot holds {self._length} tokens, not {held}")
        count = int(tokens.shape[1])
        if count == 0:
            raise ValueError("run() needs at least one token")
        if self._length + count > self._max_length:
            raise ContextLengthExceeded(self._length + count, self._max_length)
        ids = np.ascontiguousarray(tokens[0], dtype=np.int64)
        for first in range(0, count, PREFILL_CHUNK):
            logits = self._forward(ids[first : first + PREFILL_CHUNK])
        return logits[None, :]

    def _reset(self) -> None:
        empty = np.zeros(self._kv_shape, dtype=self._kv_dtype)
        self._past = [
            ort.OrtValue.ortvalue_from_numpy(empty, self._device, self._device_id)
            for _ in self._past_names
        ]
        self._length = 0

    def _forward(self, token_ids: np.ndarray) -> np.ndarray:
        total = self._length + int(token_ids.shape[0])
        self._bind_inputs(token_ids[None, :], total)
        self._bind_outputs()
        self._session.run_with_iobinding(self._binding)
        outputs = self._binding.get_outputs()
        logits: np.ndarray = outputs[0].numpy()
        self._past = list(outputs[1:])
        self._length = total
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        return np.asarray(logits[0, -1], dtype=np.float32)

    def _bind_inputs(self, ids: np.ndarray, total: int) -> None:
        binding, spec = self._binding, self._spec
        binding.bind_cpu_input(spec.input_ids, ids)
        if spec.attention_mask:
            binding.bind_cpu_input(spec.attention_mask, self._mask[:, :total])
        if spec.position_ids:
            binding.bind_cpu_input(spec.position_ids, self._positions[:, self._length : total])
        for name, value in zip(self._past_names, self._past, strict=True):
            binding.bind_ortvalue_input(name, value)

    def _bind_outputs(self) -> None:
        self._binding.bind_output(self._spec.logits, "cpu")
        for name in self._present_names:
            self._binding.bind_output(name, self._device, self._device_id)
