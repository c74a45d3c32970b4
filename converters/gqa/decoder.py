"""Build a llama-style decoder as one ONNX graph around com.microsoft GroupQueryAttention.

Graph inputs: ``input_ids`` [batch, seq], ``attention_mask`` [batch, total] (ones for every
cached or new token of a row, zeros after), and per layer ``past_key_values.N.key/value``
[batch, kv_heads, max_length, head_dim]. The same buffers come back as ``present.N.*``: the
runner binds both names to one piece of memory and GroupQueryAttention writes the new keys
and values in place. ``logits`` is [batch, 1, vocab]: only the last position reaches the
lm_head.

:class:`LlamaDecoder` builds the graph from small steps (embedding, norms, projections,
attention attributes, activation, head); each other family is a subclass that changes the
steps it computes differently.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.errors import UnsupportedArchitecture
from converters.gqa.graph import FLOAT, INT32, INT64, MS_DOMAIN, GraphBuilder
from converters.gqa.rotary import context_limit, rope_tables
from converters.gqa.weights import DecoderConfig, Weights

LAST_POSITION = "/model/last/"  # name prefix of the nodes that keep only the last position


class LlamaDecoder:
    """Llama, SmolLM2 and relatives: RMSNorm, rotary GQA, SiLU-gated MLP."""

    qkv_bias = False
    qk_norm = False  # an RMSNorm over each head of q and k before the rotation (Qwen3, Gemma 3)
    sliding_windows = False  # whether the family may limit some layers to a window of keys

    def __init__(self, hf_dir: Path, cfg: DecoderConfig, raw: dict[str, Any], max_length: int):
        self.hf_dir = Path(hf_dir)
        self.cfg = cfg
        self.raw = raw
        self.max_length = max_length
        self.w = Weights(hf_dir)
        self.g = GraphBuilder(f"{cfg.model_type}-gqa")

    @cached_property
    def config(self) -> Any:
        """The transformers config, with the defaults the family's code fills in."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(self.hf_dir))

    def check(self) -> None:
        """Refuse variants this builder does not compute (sliding windows, MLP biases)."""
        if self.raw.get("mlp_bias"):
            raise UnsupportedArchitecture("the gqa graph has no MLP biases; use --graph optimum")
        if not self.sliding_windows and (
            (self.raw.get("use_sliding_window") and self.raw.get("sliding_window"))
            or any(self.window(i) is not None for i in range(self.cfg.num_layers))
        ):
            raise UnsupportedArchitecture("sliding-window attention is not in the gqa graph")
        self.check_activation()
        limit = context_limit(self.config)
        if limit is not None and self.max_length > limit:
            raise UnsupportedArchitecture(
                f"the gqa graph computes rotary positions up to {limit} tokens for this "
                f"model, not {self.max_length}; lower --max-context"
            )

    def check_activation(self) -> None:
        if self.raw.get("hidden_act", "silu") != "silu":
            raise UnsupportedArchitecture(f"activation {self.raw['hidden_act']!r} is not SiLU")

    def has_qkv_bias(self) -> bool:
        return self.qkv_bias or bool(self.raw.get("attention_bias", False))

    def window(self, i: int) -> int | None:
        """How many keys layer ``i`` sees (itself included), or None for all of them."""
        size = getattr(self.config, "sliding_window", None)
        types = getattr(self.config, "layer_types", None)
        if not size or (types is not None and types[i] != "sliding_attention"):
            return None
        return int(size)

    def build(self) -> onnx.ModelProto:
        """Return the whole fp32 graph."""
        self.check()
        seqlens, total = self._inputs()
        self._rotary_tables()
        residual = self._embed()
        update: str | None = None
        for i in range(self.cfg.num_layers):
            update, residual = self._layer(i, update, residual, seqlens, total)
        self._head(update, residual)
        return self.g.model()

    def _rotary_tables(self) -> None:
        cos, sin = rope_tables(self.config, self.max_length)
        half = cos.shape[1]
        # GroupQueryAttention rotates a part of each head only in steps of 16 dimensions.
        if half * 2 != self.cfg.head_dim and (half % 8 or half * 2 > self.cfg.head_dim):
            raise UnsupportedArchitecture(
                f"a rotary part of {half * 2} of {self.cfg.head_dim} head dimensions is not a "
                "multiple of 16; use --graph optimum"
            )
        self.g.weight("rotary.cos_cache", cos)
        self.g.weight("rotary.sin_cache", sin)

    def rotary(self, i: int) -> tuple[str, str]:
        """Names of the cos and sin tables layer ``i`` rotates with."""
        return "rotary.cos_cache", "rotary.sin_cache"

    def _embed(self) -> str:
        embed = self.g.weight("model.embed_tokens.weight", self.w.get("model.embed_tokens.weight"))
        return self.g.op1("Gather", [embed, "input_ids"], "/model/embed_tokens/Gather")

    def _layer(
        self, i: int, update: str | None, residual: str, seqlens: str, total: str
    ) -> tuple[str, str]:
        """One decoder layer; return (its update to the residual stream, the stream)."""
        normed, residual = self._norm(f"model.layers.{i}.input_layernorm", update, residual)
        attn = self._attention(i, normed, seqlens, total)
        normed, residual = self._norm(f"model.layers.{i}.post_attention_layernorm", attn, residual)
        return self._mlp(i, normed), residual

    def _inputs(self) -> tuple[str, str]:
        g, c = self.g, self.cfg
        g.add_input("input_ids", INT64, ["batch_size", "sequence_length"])
        g.add_input("attention_mask", INT64, ["batch_size", "total_sequence_length"])
        kv_shape: list[int | str] = [
            "batch_size",
            c.num_kv_heads,
            "max_sequence_length",
            c.head_dim,
        ]
        for i in range(c.num_layers):
            for part in ("key", "value"):
                g.add_input(f"past_key_values.{i}.{part}", FLOAT, kv_shape)
        # seqlens_k is the index of each row's last token; total is the longest row.
        one = g.const_i64("const.one", [1])
        count = g.op1("ReduceSum", ["attention_mask", one], "/mask/ReduceSum", keepdims=0)
        last = g.op1("Sub", [count, one], "/mask/Sub")
        seqlens = g.op1("Cast", [last], "/mask/seqlens_k", to=INT32)
        shape = g.op1("Shape", ["attention_mask"], "/mask/Shape")
        index = g.weight("const.index_one", np.asarray(1, dtype=np.int64))
        width = g.op1("Gather", [shape, index], "/mask/Gather", axis=0)
        total = g.op1("Cast", [width], "/mask/total_seq_len", to=INT32)
        return seqlens, total

    def norm_scale(self, prefix: str) -> np.ndarray:
        """The RMSNorm weight as the graph multiplies by it."""
        return self.w.get(f"{prefix}.weight")

    def _norm(self, prefix: str, update: str | None, residual: str) -> tuple[str, str]:
        """RMSNorm ``update + residual``; return (normed, the new residual stream)."""
        if update is None:
            return self._rms(prefix, residual), residual
        scale = self.g.weight(f"{prefix}.weight", self.norm_scale(prefix))
        name = "/" + prefix.replace(".", "/")
        outs = self.g.op(
            "SkipSimplifiedLayerNormalization",
            [update, residual, scale],
            name,
            outputs=[f"{name}/out0", "", "", f"{name}/out3"],
            domain=MS_DOMAIN,
            epsilon=self.cfg.rms_norm_eps,
        )
        return outs[0], outs[3]

    def _rms(self, prefix: str, x: str) -> str:
        """RMSNorm of ``x`` over its last axis with the weight ``prefix.weight``."""
        scale = self.g.weight(f"{prefix}.weight", self.norm_scale(prefix))
        return self.g.op1(
            "SimplifiedLayerNormalization",
            [x, scale],
            "/" + prefix.replace(".", "/"),
            axis=-1,
            epsilon=self.cfg.rms_norm_eps,
            stash_type=1,
        )

    def qkv_weight(self, p: str) -> np.ndarray:
        """The q, k and v projections side by side, ``[hidden, (heads + 2 kv_heads) head_dim]``."""
        parts = [self.w.linear(f"{p}.{n}_proj.weight") for n in ("q", "k", "v")]
        return np.concatenate(parts, axis=1)

    def _qkv(self, i: int, x: str) -> list[str]:
        """Return GroupQueryAttention's query, key and value inputs (packed: "", "" for k, v)."""
        g = self.g
        p = f"model.layers.{i}.self_attn"
        qkv = g.op1(
            "MatMul", [x, g.weight(f"{p}.qkv_proj.MatMul.weight", self.qkv_weight(p))],
            f"/{p}/qkv_proj/MatMul",
        )
        if self.has_qkv_bias():
            bias = np.concatenate([self.w.get(f"{p}.{n}_proj.bias") for n in ("q", "k", "v")])
            qkv = g.op1("Add", [qkv, g.weight(f"{p}.qkv_proj.bias", bias)], f"/{p}/qkv_proj/Add")
        if not self.qk_norm:
            return [qkv, "", ""]
        return self._normed_heads(p, qkv)

    def _normed_heads(self, p: str, qkv: str) -> list[str]:
        """Split packed q, k, v and RMSNorm every head of q and of k."""
        c, g = self.cfg, self.g
        sizes = [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]
        q, k, v = g.op("Split", [qkv, g.const_i64(f"{p}.qkv_sizes", sizes)], f"/{p}/qkv/Split",
                       outputs=3, axis=-1)
        heads = g.const_i64(f"{p}.heads_shape", [0, 0, -1, c.head_dim])
        flat = g.const_i64(f"{p}.flat_shape", [0, 0, -1])
        normed = []
        for part, x in (("q", q), ("k", k)):
            split = g.op1("Reshape", [x, heads], f"/{p}/{part}_norm/Reshape")
            out = self._rms(f"{p}.{part}_norm", split)
            normed.append(g.op1("Reshape", [out, flat], f"/{p}/{part}_norm/Reshape_back"))
        return [normed[0], normed[1], v]

    def attention_scale(self) -> float:
        return float(self.cfg.head_dim**-0.5)

    def attention_attrs(self, i: int) -> dict[str, Any]:
        """GroupQueryAttention attributes beyond the llama ones (a window, a soft cap)."""
        size = self.window(i)
        if size is None or size >= self.max_length:
            return {}
        # Both count the token itself: transformers' window of W keys is local_window_size W.
        return {"local_window_size": size}

    def _attention(self, i: int, x: str, seqlens: str, total: str) -> str:
        c, g = self.cfg, self.g
        p = f"model.layers.{i}.self_attn"
        q, k, v = self._qkv(i, x)
        cos, sin = self.rotary(i)
        outs = g.op(
            "GroupQueryAttention",
            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total,
             cos, sin],
            f"/{p}/GroupQueryAttention",
            outputs=[f"/{p}/GroupQueryAttention/out0", f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN,
            num_heads=c.num_heads,
            kv_num_heads=c.num_kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
            scale=self.attention_scale(),
            **self.attention_attrs(i),
        )
        kv_shape: list[int | str] = [
            "batch_size",
            c.num_kv_heads,
            "max_sequence_length",
            c.head_dim,
        ]
        g.add_output(f"present.{i}.key", FLOAT, kv_shape)
        g.add_output(f"present.{i}.value", FLOAT, kv_shape)
        o_w = g.weight(f"{p}.o_proj.MatMul.weight", self.w.linear(f"{p}.o_proj.weight"))
        return g.op1("MatMul", [outs[0], o_w], f"/{p}/o_proj/MatMul")

    def gate_up_weight(self, p: str) -> np.ndarray:
        """The gate and up projections side by side, ``[hidden, 2 intermediate]``."""
        return np.concatenate(
            [self.w.linear(f"{p}.gate_proj.weight"), self.w.linear(f"{p}.up_proj.weight")], axis=1
        )

    def _mlp(self, i: int, x: str) -> str:
        g, size = self.g, self.cfg.intermediate_size
        p = f"model.layers.{i}.mlp"
        gate_up = g.op1(
            "MatMul",
            [x, g.weight(f"{p}.gate_up_proj.MatMul.weight", self.gate_up_weight(p))],
            f"/{p}/gate_up_proj/MatMul",
        )
        sizes = g.const_i64(f"{p}.split_sizes", [size, size])
        gate, up = g.op("Split", [gate_up, sizes], f"/{p}/Split", outputs=2, axis=-1)
        prod = g.op1("Mul", [self._activation(p, gate), up], f"/{p}/Mul")
        down = g.weight(f"{p}.down_proj.MatMul.weight", self.w.linear(f"{p}.down_proj.weight"))
        return g.op1("MatMul", [prod, down], f"/{p}/down_proj/MatMul")

    def _activation(self, p: str, gate: str) -> str:
        """SiLU."""
        sigmoid = self.g.op1("Sigmoid", [gate], f"/{p}/act/Sigmoid")
        return self.g.op1("Mul", [gate, sigmoid], f"/{p}/act/Mul")

    def _head(self, update: str | None, residual: str) -> None:
        """Norm the last position only, then the (untied) lm_head."""
        g = self.g
        last = g.const_i64("const.last", [-1])
        assert update is not None, "a decoder has at least one layer"
        update = g.op1("Gather", [update, last], f"{LAST_POSITION}Gather_update", axis=1)
        residual = g.op1("Gather", [residual, last], f"{LAST_POSITION}Gather_residual", axis=1)
        normed, _ = self._norm("model.norm", update, residual)
        name = "lm_head.weight" if self.w.has("lm_head.weight") else "model.embed_tokens.weight"
        head = g.weight("lm_head.MatMul.weight", self.w.linear(name))
        self._logits(normed, head)
        g.add_output("logits", FLOAT, ["batch_size", 1, self.cfg.vocab_size])

    def _logits(self, normed: str, head: str) -> None:
        """The lm_head MatMul, writing ``logits``."""
        self.g.op("MatMul", [normed, head], "/lm_head/MatMul", outputs=["logits"])


class Qwen2Decoder(LlamaDecoder):
    """Qwen2 and Qwen2.5: llama plus biases on the q, k and v projections."""

    qkv_bias = True


class Qwen3Decoder(LlamaDecoder):
    """Qwen3: llama plus an RMSNorm over every head of q and k."""

    qk_norm = True


class MistralDecoder(LlamaDecoder):
    """Mistral: llama, with a sliding window of keys in every layer when the config sets one."""

    sliding_windows = True
