"""Every family the fast graph builds, converted from a tiny HF folder: it computes what
transformers computes, its int4 bundle stays near fp32, and ``edge-runtime run`` answers."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle import read_manifest
from edge_runtime.engine import EngineOptions, GenerationRequest, OnnxEngine, load_engine
from tests.fixtures import tiny_families
from tests.fixtures.tiny_families import FAMILIES

# The session fixtures this module uses (pytest finds fixtures by module attribute).
family_hf = tiny_families.family_hf
family_bundle = tiny_families.family_bundle
family_reference = tiny_families.family_reference

SHORT = "Sensors report temperature, humidity and pressure every minute."
# Over 64 tokens: the runner feeds it in two chunks, the second one over a filled cache.
LONG = (
    "Field devices answer questions offline over MQTT. def add(a, b):\n    return a + b\n"
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > ! ? "
    "Emoji: 🙂 🚀 ✅ and accents: café, naïve, Größe. Sensors report every minute."
)
STEPS = 4
FAMILY_NAMES = list(FAMILIES)


def engine_for(bundle: Path) -> OnnxEngine:
    return load_engine(bundle, EngineOptions(provider="cpu", threads=1))


def torch_last_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fast_path_prompt_and_decode_logits_match_transformers(
    family: str,
    family_bundle: Callable[..., Path],
    family_hf: Callable[[str], Path],
    family_reference: Callable[[Path], Any],
) -> None:
    bundle = family_bundle(family)
    assert read_manifest(bundle).graph.kind == "gqa"
    engine = engine_for(bundle)
    model = family_reference(family_hf(family))
    for text in (SHORT, LONG):
        ids = engine.tokenizer.encode(text)
        sequence = engine.single_sequence()
        sequence.reset(len(ids) + STEPS)
        logits = sequence.forward(np.asarray(ids))
        for _ in range(STEPS):
            expected = torch_last_logits(model, ids)
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
            ids.append(int(np.argmax(expected)))
            logits = sequence.forward(np.asarray(ids[-1:]))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_int4_greedy_agreement_with_fp32_is_reported(
    family: str,
    family_bundle: Callable[..., Path],
    record_property: Callable[[str, object], None],
) -> None:
    fp32, int4 = engine_for(family_bundle(family)), engine_for(family_bundle(family, "int4"))
    manifest = read_manifest(family_bundle(family, "int4"))
    assert manifest.graph.kind == "gqa"
    assert manifest.quantization.method == "int4_matmul_nbits"
    assert manifest.quantization.unquantized == []
    ids = fp32.tokenizer.encode(LONG)
    ref, quant = fp32.single_sequence(), int4.single_sequence()
    ref.reset(len(ids) + 16)
    quant.reset(len(ids) + 16)
    agree, cosines = 0, []
    step = ids
    for _ in range(16):  # teacher-forced along the fp32 greedy path
        a, b = ref.forward(np.asarray(step)), quant.forward(np.asarray(step))
        cosines.append(float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)))
        agree += int(np.argmax(a) == np.argmax(b))
        step = [int(np.argmax(a))]
    record_property("int4_top1_agreement", agree / 16)
    print(f"{family}: int4 top-1 agreement with fp32 {agree}/16, "
          f"logit cosine min {min(cosines):.3f}")
    assert min(cosines) > 0.8  # a sanity bound: a broken graph gives unrelated logits


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_run_answers_with_the_transformers_greedy_tokens(
    family: str,
    family_bundle: Callable[..., Path],
    family_hf: Callable[[str], Path],
    family_reference: Callable[[Path], Any],
) -> None:
    import torch

    bundle = family_bundle(family)
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", str(bundle), SHORT, "--max-tokens", "8",
         "--temperature", "0", "--provider", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    engine = engine_for(bundle)
    ids = engine.encode(GenerationRequest(prompt=SHORT))  # the chat template, as run applies it
    eos = read_manifest(bundle).architecture.eos_token_ids
    with torch.no_grad():
        out = family_reference(family_hf(family)).generate(
            torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=eos
        )
    new = [t for t in out[0, len(ids):].tolist() if t not in eos]
    assert new, "the reference stopped at once; the test would prove nothing"
    # Random weights pick byte tokens that split UTF-8 characters: the stream and a whole-text
    # decode render those pieces differently, so replacement characters are left out.
    def text(s: str) -> str:
        return s.replace("\ufffd", "").strip()

    assert text(proc.stdout) == text(engine.tokenizer.decode(new))


def test_every_family_has_a_fast_graph_builder() -> None:
    from converters.gqa import supports

    for model_type in ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3"):
        assert supports(model_type), model_type


def _variant(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_an_unknown_rope_scaling_is_refused_by_the_fast_graph_and_sent_to_optimum(
    tmp_path: Path,
    family_hf: Callable[[str], Path],
    family_reference: Callable[[Path], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from converters import ConvertOptions, convert
    from converters.errors import UnsupportedArchitecture
    from tests.converter.greedy import GraphRunner

    hf = _variant(family_hf("llama3"), tmp_path / "dynamic",
                  rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(UnsupportedArchitecture, match="dynamic"):
        convert(hf, tmp_path / "gqa", ConvertOptions(quant="fp32", graph="gqa"))
    assert not (tmp_path / "gqa").exists()
    with caplog.at_level(logging.WARNING):
        manifest = convert(hf, tmp_path / "auto", ConvertOptions(quant="fp32"))
    assert manifest.graph.kind == "optimum"
    assert any("dynamic" in r.getMessage() and "optimum" in r.getMessage()
               for r in caplog.records)
    runner = GraphRunner(tmp_path / "auto")
    ids = [5, 17, 33, 100, 200, 7, 9, 42]
    expected = torch_last_logits(family_reference(hf), ids)
    np.testing.assert_allclose(runner.forward(ids), expected, atol=1e-4, rtol=0)


def test_a_rotary_part_the_attention_op_cannot_rotate_is_refused(
    tmp_path: Path, family_hf: Callable[[str], Path]
) -> None:
    from converters.errors import UnsupportedArchitecture
    from converters.gqa import export

    # 8 of 32 head dimensions: GroupQueryAttention rotates parts in steps of 16 only.
    config = json.loads((family_hf("phi3") / "config.json").read_text())
    scaling = dict(config["rope_scaling"], short_factor=[1.0] * 4, long_factor=[1.0] * 4)
    hf = _variant(family_hf("phi3"), tmp_path / "quarter", partial_rotary_factor=0.25,
                  rope_scaling=scaling)
    with pytest.raises(UnsupportedArchitecture, match="multiple of 16"):
        export(hf, tmp_path / "out", max_length=64)


def test_longrope_context_stops_at_the_pretrained_length(
    family_bundle: Callable[..., Path], family_hf: Callable[[str], Path]
) -> None:
    config = json.loads((family_hf("phi3") / "config.json").read_text())
    assert config["max_position_embeddings"] > config["original_max_position_embeddings"]
    context = read_manifest(family_bundle("phi3")).architecture.context_length
    assert context == config["original_max_position_embeddings"]


def test_a_soft_capped_head_shares_its_int4_table_with_the_embedding(
    family_bundle: Callable[..., Path],
) -> None:
    import onnx

    graph = onnx.load(str(family_bundle("gemma2", "int4") / "model.onnx")).graph
    producers = {out: n for n in graph.node for out in n.output}
    assert producers["logits"].op_type == "Mul"  # cap * tanh(logits / cap)
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith(
        "/lm_head/"))
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert gather.input[0] == head.input[1]  # one int4 table, read by both


def test_a_generic_export_the_runtime_cannot_feed_is_refused(
    tmp_path: Path, family_hf: Callable[[str], Path]
) -> None:
    from converters import ConvertOptions, convert
    from converters.errors import UnsupportedArchitecture

    # optimum exports Gemma without position_ids; the runtime's optimum runner feeds them.
    with pytest.raises(UnsupportedArchitecture, match="position_ids"):
        convert(family_hf("gemma2"), tmp_path / "out", ConvertOptions(quant="fp32",
                                                                       graph="optimum"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_rows_decoded_in_one_batch_get_the_logits_they_get_alone(
    family: str, family_bundle: Callable[..., Path]
) -> None:
    from edge_runtime.engine.runners.gqa import GqaSlots

    engine = engine_for(family_bundle(family))
    prompts = [engine.tokenizer.encode(SHORT), engine.tokenizer.encode(LONG)[:30]]
    alone: list[list[np.ndarray]] = []
    paths: list[list[int]] = []
    for prompt in prompts:  # each row alone: the prompt, then greedy steps
        sequence = engine.single_sequence()
        sequence.reset(len(prompt) + STEPS)
        logits, steps, path = sequence.forward(np.asarray(prompt)), [], []
        for _ in range(STEPS):
            path.append(int(np.argmax(logits)))
            logits = sequence.forward(np.asarray(path[-1:]))
            steps.append(logits)
        alone.append(steps)
        paths.append(path)
    slots = engine.new_slots(2)
    assert isinstance(slots, GqaSlots)
    for row, prompt in enumerate(prompts):
        slots.run(row, np.asarray([prompt]), np.zeros(1, np.int64))
    lengths = np.array([len(p) for p in prompts], np.int64)
    for step in range(STEPS):  # rows of different lengths, past their windows, in one forward
        tokens = np.array([[paths[0][step]], [paths[1][step]]], np.int64)
        logits = slots.run(0, tokens, lengths)
        lengths += 1
        for row in range(2):
            np.testing.assert_allclose(logits[row], alone[row][step], atol=1e-5, rtol=0)
