"""Tiny random llama/qwen2 models: fp32 bundles match transformers; int8/int4 bundles run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import verify_bundle
from tests.converter.greedy import GraphRunner

PROMPT = "Sensors report temperature every minute."


def _hf_logits(hf_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long))
    return out.logits[0].numpy()


def _encode(bundle: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(bundle / "tokenizer.json")).encode(text).ids)



def _bundle_bytes(bundle: Path) -> int:
    return sum(f.stat().st_size for f in bundle.iterdir())

@pytest.fixture(scope="module")
def optimum_bundle(tiny_bundle: Callable[..., Path]) -> Callable[..., Path]:
    """Tiny bundles built with the optimum graph explicitly (the one this area exports)."""

    def make(arch: str, quant: str) -> Path:
        return tiny_bundle(arch, quant, graph="optimum")

    return make


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fp32_logits_match_transformers(
    arch: str, optimum_bundle: Callable[..., Path], tiny_hf_model: Callable[..., Path]
) -> None:
    bundle = optimum_bundle(arch, "fp32")
    ids = _encode(bundle, PROMPT)
    expected = _hf_logits(tiny_hf_model(arch), ids)
    runner = GraphRunner(bundle)
    prefill = runner.forward(ids[:-3])
    np.testing.assert_allclose(prefill, expected[len(ids) - 4], atol=1e-4, rtol=0)
    for offset, token in enumerate(ids[-3:]):  # decode steps go through the KV cache
        step = runner.forward([token])
        np.testing.assert_allclose(step, expected[len(ids) - 3 + offset], atol=1e-4, rtol=0)


@pytest.mark.parametrize(("quant", "min_cosine"), [("int8", 0.99), ("int4", 0.95)])
def test_quantized_bundle_tracks_fp32_and_generates(
    quant: str, min_cosine: float, optimum_bundle: Callable[..., Path]
) -> None:
    fp32, quantized = optimum_bundle("llama", "fp32"), optimum_bundle("llama", quant)
    prompt = _encode(fp32, PROMPT)
    reference = GraphRunner(fp32)
    runner = GraphRunner(quantized)
    # Teacher-forced along the fp32 greedy path: logits stay close at every step.
    path = reference.greedy(prompt, 8)
    reference.reset()
    for ids in [prompt, *([t] for t in path)]:
        a, b = reference.forward(ids), runner.forward(ids)
        cosine = float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
        assert cosine > min_cosine, cosine
        # The quantized pick is the fp32 pick or a near-tie of it (a random token would lie
        # 2 to 3 standard deviations below the best).
        assert a.max() - a[int(np.argmax(b))] <= a.std(), (a.max(), a[int(np.argmax(b))])
    assert len(runner.greedy(prompt, 8)) > 0


def test_int4_quantizes_embedding_and_untied_lm_head(optimum_bundle: Callable[..., Path]) -> None:
    import onnx

    bundle = optimum_bundle("llama", "int4")
    manifest = verify_bundle(bundle)
    ops = [n.op_type for n in onnx.load(str(bundle / "model.onnx")).graph.node]
    assert "GatherBlockQuantized" in ops
    # 2 layers x 7 projections, plus the lm_head that was tied to the embedding.
    assert ops.count("MatMulNBits") == 2 * 7 + 1
    assert manifest.quantization.unquantized == []
    fp32_size = _bundle_bytes(optimum_bundle("llama", "fp32"))
    assert _bundle_bytes(bundle) < fp32_size / 2


def test_keep_fp32_leaves_named_weights_unquantized(
    tmp_path: Path, tiny_hf_model: Callable[..., Path]
) -> None:
    from converters import ConvertOptions, convert

    manifest = convert(
        tiny_hf_model("llama"),
        tmp_path / "b",
        ConvertOptions(quant="int4", graph="optimum", keep_fp32=("embed_tokens",)),
    )
    assert any("embed_tokens" in name for name in manifest.quantization.unquantized)


def test_manifest_facts_describe_the_model(
    optimum_bundle: Callable[..., Path], tiny_hf_model: Callable[..., Path]
) -> None:
    bundle = optimum_bundle("qwen2", "int4")
    manifest = verify_bundle(bundle)
    config = json.loads((tiny_hf_model("qwen2") / "config.json").read_text())
    arch = manifest.architecture
    assert arch.model_type == "qwen2"
    assert (arch.num_layers, arch.num_kv_heads, arch.vocab_size) == (
        config["num_hidden_layers"],
        config["num_key_value_heads"],
        config["vocab_size"],
    )
    from tokenizers import Tokenizer

    im_end = Tokenizer.from_file(str(bundle / "tokenizer.json")).token_to_id("<|im_end|>")
    assert im_end in arch.eos_token_ids
    assert manifest.graph.logits_last_only
    assert "<|im_start|>" in (bundle / "chat_template.jinja").read_text()
    assert manifest.quantization.block_size == 32


def test_max_context_caps_context_length(
    tmp_path: Path, tiny_hf_model: Callable[..., Path]
) -> None:
    from converters import ConvertOptions, convert

    manifest = convert(
        tiny_hf_model("llama"),
        tmp_path / "b",
        ConvertOptions(quant="fp32", graph="optimum", max_context=64),
    )
    assert manifest.architecture.context_length == 64


def test_symmetric_int4_uses_no_zero_points(
    tmp_path: Path, tiny_hf_model: Callable[..., Path], optimum_bundle: Callable[..., Path]
) -> None:
    import onnx

    from converters import ConvertOptions, convert

    out = tmp_path / "b"
    options = ConvertOptions(quant="int4", graph="optimum", int4_scheme="symmetric")
    manifest = convert(tiny_hf_model("llama"), out, options)
    assert manifest.quantization.symmetric is True
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 2 * 7 + 1
    assert all(len(n.input) == 3 for n in nodes)  # A, B, scales: no zero points
    affine = tmp_path / "affine"
    convert(tiny_hf_model("llama"), affine, ConvertOptions(quant="int4", graph="optimum",
                                                           int4_scheme="affine"))
    assert _bundle_bytes(out) < _bundle_bytes(affine)
    prompt = _encode(out, PROMPT)
    assert len(GraphRunner(out).greedy(prompt, 4)) > 0
