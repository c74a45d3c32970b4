"""A minimal greedy loop over an ``optimum``-kind bundle, straight on onnxruntime.

Tests use it to check the converter's graph independently of the engine: it feeds
past/present exactly as the bundle's GraphSpec names them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_runtime.bundle import Manifest, verify_bundle


class GraphRunner:
    """Run one sequence through a bundle's ``optimum`` graph, keeping its KV cache."""

    def __init__(self, bundle: Path) -> None:
        self.manifest: Manifest = verify_bundle(bundle)
        assert self.manifest.graph.kind == "optimum", self.manifest.graph.kind
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(
            str(Path(bundle) / self.manifest.model_file),
            options,
            providers=["CPUExecutionProvider"],
        )
        self.reset()

    def reset(self) -> None:
        arch = self.manifest.architecture
        empty = np.zeros((1, arch.num_kv_heads, 0, arch.head_dim), dtype=np.float32)
        self.past = {
            name: empty
            for layer in range(arch.num_layers)
            for name in (
                self.manifest.graph.past_key.format(layer=layer),
                self.manifest.graph.past_value.format(layer=layer),
            )
        }
        self.length = 0

    def forward(self, ids: list[int]) -> np.ndarray:
        """Append ``ids``; return the float32 logits of the last position, shape [vocab]."""
        spec, arch = self.manifest.graph, self.manifest.architecture
        n = len(ids)
        feed: dict[str, np.ndarray] = {spec.input_ids: np.array([ids], dtype=np.int64), **self.past}
        if spec.attention_mask:
            feed[spec.attention_mask] = np.ones((1, self.length + n), dtype=np.int64)
        if spec.position_ids:
            feed[spec.position_ids] = np.arange(self.length, self.length + n, dtype=np.int64)[None]
        names = [spec.logits]
        for layer in range(arch.num_layers):
            names += [spec.present_key.format(layer=layer), spec.present_value.format(layer=layer)]
        outputs = self.session.run(names, feed)
        for layer in range(arch.num_layers):
            self.past[spec.past_key.format(layer=layer)] = outputs[1 + 2 * layer]
            self.past[spec.past_value.format(layer=layer)] = outputs[2 + 2 * layer]
        self.length += n
        logits = outputs[0]
        if spec.logits_last_only:
            assert logits.shape[1] == 1, logits.shape
        return np.asarray(logits[0, -1], dtype=np.float32)

    def greedy(self, prompt: list[int], max_new: int) -> list[int]:
        """Greedy-decode up to ``max_new`` tokens, stopping at an eos id."""
        self.reset()
        out: list[int] = []
        logits = self.forward(prompt)
        eos = set(self.manifest.architecture.eos_token_ids)
        for _ in range(max_new):
            token = int(np.argmax(logits))
            if token in eos:
                break
            out.append(token)
            logits = self.forward([token])
        return out
