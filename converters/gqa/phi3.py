"""Phi-3 and Phi-4-mini on the gqa graph."""

from __future__ import annotations

import numpy as np

from converters.gqa.decoder import LlamaDecoder


class Phi3Decoder(LlamaDecoder):
    """Phi-3 / Phi-4-mini: llama with fused qkv and gate-up projections, a partial rotary
    factor, LongRoPE's short factors and a sliding window of keys where the config sets one."""

    sliding_windows = True

    def qkv_weight(self, p: str) -> np.ndarray:
        return self.w.linear(f"{p}.qkv_proj.weight")

    def gate_up_weight(self, p: str) -> np.ndarray:
        return self.w.linear(f"{p}.gate_up_proj.weight")
