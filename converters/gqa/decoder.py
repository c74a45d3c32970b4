"""Build a llama-style decoder as one ONNX graph around com.microsoft GroupQueryAttention.

Graph inputs: ``input_ids`` [batch, seq], ``attention_mask`` [batch, total] (ones for every
cached or new token of a row, zeros after), and per layer ``past_key_values.N.key/value``
[batch, kv_heads, max_length, head_dim]. The same buffers come back as ``present.N.*``: the
runner binds both names to one piece of memory and GroupQueryAttention writes the new keys
and values in place. ``logits`` is [batch, 1, vocab]: only the last position reaches the
lm_head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.errors import UnsupportedArchitecture
from converters.gqa.graph import FLOAT, INT32, INT64, MS_DOMAIN, GraphBuilder
from converters.gqa.rotary import rope_tables
from converters.gqa.weights import DecoderConfig, Weights

LAST_POSITION = "/model/last/"  # name prefix of the nodes that keep only the last position


class LlamaDecoder:
    """Llama, SmolLM2 and relatives: RMSNorm, rotary GQA, SiLU-gated MLP."""

    qkv_bias = False

    def __init__(self, hf_dir: Path, cfg: DecoderConfig, raw: dict[str, Any], max_length: int):
        self.hf_dir = Path(hf_dir)
        self.cfg = cfg
        self.raw = raw
        self.max_length = max_length
        self.w = Weights(hf_dir)
        self.g = GraphBuilder(f"{cfg.model_type}-gqa")

    def check(self) -> None:
        """Refuse variants this builder does not compute (sliding windows, MLP biases)."""
        if self.raw.get("mlp_bias"):
            raise UnsupportedArchitecture("the gqa graph has no MLP biases; use --graph optimum")
        if self.raw.get("use_sliding_window") and self.raw.get("sliding_window"):
            raise UnsupportedArchitecture("sliding-window attention is not in the gqa graph")
        if self.raw.get("hidden_act", "silu") != "silu":
            raise UnsupportedArchitecture(f"activation {self.raw['hidden_act']!r} is not SiLU")

    def has_qkv_bias(self) -> bool:
        return self.qkv_bias or bool(self.raw.get("attention_bias", False))

    def build(self) -> onnx.ModelProto:
        """Return the whole fp32 graph."""
        self.check()
        seqlens, total = self._inputs()
        cos, sin = rope_tables(self.hf_dir, self.max_length)
        self.g.weight("rotary.cos_cache", cos)
        self.g.weight("rotary.sin_cache", sin)
        embed = self.g.weight("model.embed_tokens.weight", self.w.get("model.embed_tokens.weight"))
        hidden = self.g.op1("Gather", [embed, "input_ids"], "/model/embed_tokens/Gather")
        residual = hidden
        update: str | None = None
        for i in range(self.cfg.num_layers):
            normed, residual = self._norm(f"model.layers.{i}.input_layernorm", update, residual)
            attn = self._attention(i, normed, seqlens, total)
            normed, residual = self._norm(
                f"model.layers.{i}.post_attention_layernorm", attn, residual
            )
            update = self._mlp(i, normed)
        self._head(update, residual)
        return self.g.model()

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

    def _norm(self, prefix: str, update: str | None, residual: str) -> tuple[str, str]:
        """RMSNorm ``update + residual``; return (normed, the new residual stream)."""
        scale = self.g.weight(f"{prefix}.weight", self.w.get(f"{prefix}.weight"))
        eps = self.cfg.rms_norm_eps
        name = "/" + prefix.replace(".", "/")
        if update is None:
            out = self.g.op1(
                "SimplifiedLayerNormalization",
                [residual, scale],
                name,
                axis=-1,
                epsilon=eps,
                stash_type=1,
            )
            return out, residual
        outs = self.g.op(
            "SkipSimplifiedLayerNormalization",
            [update, residual, scale],
            name,
            outputs=[f"{name}/out0", "", "", f"{name}/out3"],
            domain=MS_DOMAIN,
            epsilon=eps,
        )
        return outs[0], outs[3]

    def _attention(self, i: int, x: str, seqlens: str, total: str) -> str:
        c, g = self.cfg, self.g
        p = f"model.layers.{i}.self_attn"
        packed = np.concatenate(
            [self.w.linear(f"{p}.{n}_proj.weight") for n in ("q", "k", "v")], axis=1
        )
        qkv = g.op1(
            "MatMul", [x, g.weight(f"{p}.qkv_proj.MatMul.weight", packed)], f"/{p}/qkv_proj/MatMul"
        )
        if self.has_qkv_bias():
            bias = np.concatenate([self.w.get(f"{p}.{n}_proj.bias") for n in ("q", "k", "v")])
            qkv = g.op1("Add", [qkv, g.weight(f"{p}.qkv_proj.bias", bias)], f"/{p}/qkv_proj/Add")
        outs = g.op(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                f"past_key_values.{i}.key",
                f"past_key_values.{i}.value",
                seqlens,
                total,
                "rotary.cos_cache",
                "rotary.sin_cache",
            ],
            f"/{p}/GroupQueryAttention",
            outputs=[f"/{p}/GroupQueryAttention/out0", f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN,
            num_heads=c.num_heads,
            kv_num_heads=c.num_kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(c.head_dim**-0.5),
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

    def _mlp(self, i: int, x: str) -> str:
        g, size = self.g, self.cfg.intermediate_size
        p = f"model.layers.{i}.mlp"
        packed = np.concatenate(
            [self.w.linear(f"{p}.gate_proj.weight"), self.w.linear(f"{p}.up_proj.weight")], axis=1
        )
        gate_up = g.op1(
            "MatMul",
            [x, g.weight(f"{p}.gate_up_proj.MatMul.weight", packed)],
            f"/{p}/gate_up_proj/MatMul",
        )
        sizes = g.const_i64(f"{p}.split_sizes", [size, size])
        gate, up = g.op("Split", [gate_up, sizes], f"/{p}/Split", outputs=2, axis=-1)
        act = g.op1("Mul", [gate, g.op1("Sigmoid", [gate], f"/{p}/act/Sigmoid")], f"/{p}/act/Mul")
        prod = g.op1("Mul", [act, up], f"/{p}/Mul")
        down = g.weight(f"{p}.down_proj.MatMul.weight", self.w.linear(f"{p}.down_proj.weight"))
        return g.op1("MatMul", [prod, down], f"/{p}/down_proj/MatMul")

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
        g.op("MatMul", [normed, head], "/lm_head/MatMul", outputs=["logits"])
        g.add_output("logits", FLOAT, ["batch_size", 1, self.cfg.vocab_size])


class Qwen2Decoder(LlamaDecoder):
    """Qwen2 and Qwen2.5: llama plus biases on the q, k and v projections."""

    qkv_bias = True


ARCHITECTURES: dict[str, type[LlamaDecoder]] = {"llama": LlamaDecoder, "qwen2": Qwen2Decoder}
