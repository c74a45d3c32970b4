"""Gemma 2 and Gemma 3 on the gqa graph."""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.errors import UnsupportedArchitecture
from converters.gqa.decoder import LlamaDecoder
from converters.gqa.graph import MS_DOMAIN
from converters.gqa.rotary import local_rope_tables

# transformers' activation names and the com.microsoft op that computes each.
GELU_OPS = {"gelu_pytorch_tanh": "FastGelu", "gelu": "Gelu"}


class Gemma2Decoder(LlamaDecoder):
    """Gemma 2: (1 + w) RMSNorms before and after attention and MLP, an embedding scaled by
    sqrt(hidden), GELU, soft-capped attention scores and logits, sliding-window layers."""

    sliding_windows = True

    def check_activation(self) -> None:
        act = getattr(self.config, "hidden_activation", None) or "gelu_pytorch_tanh"
        if act not in GELU_OPS:
            raise UnsupportedArchitecture(f"activation {act!r} is not in the gqa graph")

    def norm_scale(self, prefix: str) -> np.ndarray:
        return np.float32(1.0) + self.w.get(f"{prefix}.weight")

    def _embed(self) -> str:
        rows = super()._embed()
        scale = np.asarray(self.cfg.hidden_size**0.5, np.float32)
        scale_name = self.g.weight("model.embed_scale", scale)
        return self.g.op1("Mul", [rows, scale_name], "/model/embed_tokens/Mul")

    def _layer(
        self, i: int, update: str | None, residual: str, seqlens: str, total: str
    ) -> tuple[str, str]:
        p = f"model.layers.{i}"
        normed, residual = self._norm(f"{p}.input_layernorm", update, residual)
        attn = self._attention(i, normed, seqlens, total)
        attn = self._rms(f"{p}.post_attention_layernorm", attn)
        normed, residual = self._norm(f"{p}.pre_feedforward_layernorm", attn, residual)
        return self._rms(f"{p}.post_feedforward_layernorm", self._mlp(i, normed)), residual

    def attention_scale(self) -> float:
        return float(self.config.query_pre_attn_scalar**-0.5)

    def attention_attrs(self, i: int) -> dict[str, Any]:
        attrs = super().attention_attrs(i)
        cap = getattr(self.config, "attn_logit_softcapping", None)
        if cap:
            attrs["softcap"] = float(cap)
        return attrs

    def _activation(self, p: str, gate: str) -> str:
        act = getattr(self.config, "hidden_activation", None) or "gelu_pytorch_tanh"
        op = GELU_OPS[act]
        return self.g.op1(op, [gate], f"/{p}/act/{op}", domain=MS_DOMAIN)

    def _logits(self, normed: str, head: str) -> None:
        """The lm_head, then ``cap * tanh(logits / cap)`` where the config caps the logits."""
        cap = getattr(self.config, "final_logit_softcapping", None)
        if not cap:
            super()._logits(normed, head)
            return
        g = self.g
        raw = g.op1("MatMul", [normed, head], "/lm_head/MatMul")
        value = g.weight("lm_head.softcap", np.asarray(cap, np.float32))
        tanh = g.op1("Tanh", [g.op1("Div", [raw, value], "/lm_head/softcap/Div")],
                     "/lm_head/softcap/Tanh")
        g.op("Mul", [tanh, value], "/lm_head/softcap/Mul", outputs=["logits"])


class Gemma3Decoder(Gemma2Decoder):
    """Gemma 3 (text): Gemma 2 plus per-head q and k norms and another rotary base for the
    sliding-window layers."""

    qk_norm = True

    def check(self) -> None:
        if getattr(self.config, "use_bidirectional_attention", False):
            raise UnsupportedArchitecture("bidirectional attention is not a causal decoder")
        super().check()

    def _rotary_tables(self) -> None:
        super()._rotary_tables()
        cos, sin = local_rope_tables(self.config, self.max_length)
        self.g.weight("rotary.local.cos_cache", cos)
        self.g.weight("rotary.local.sin_cache", sin)

    def rotary(self, i: int) -> tuple[str, str]:
        if self.config.layer_types[i] == "sliding_attention":
            return "rotary.local.cos_cache", "rotary.local.sin_cache"
        return super().rotary(i)
