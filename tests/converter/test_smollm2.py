"""The real SmolLM2-135M-Instruct GGUF, converted: it answers in English, int4 tracks fp32
(calibrated int4 closer than int4 rounded to nearest)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.bundle import verify_bundle
from edge_runtime.engine import GenerationRequest, load_engine
from edge_runtime.engine.types import GenerationResult

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

QUESTION = "What is the capital of France? Answer in one sentence."
COMMON_WORDS = {
    "the",
    "is",
    "of",
    "and",
    "a",
    "in",
    "it",
    "to",
    "its",
    "city",
    "capital",
    "france",
    "paris",
    "french",
    "known",
    "for",
    "as",
    "also",
    "country",
    "largest",
    "which",
}


def _generate(bundle: Path, max_tokens: int, question: str = QUESTION) -> GenerationResult:
    engine = load_engine(bundle)
    return engine.generate(GenerationRequest.model_validate({
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens, "temperature": 0.0,
    }))


def test_int4_answer_is_fluent_english_about_the_subject(
    smollm2_bundle: Callable[..., Path],
) -> None:
    text = _generate(smollm2_bundle("int4"), 40).text
    words = re.findall(r"\S+", text)
    plain = [w for w in words if re.fullmatch(r"[A-Za-z][a-z']*[.,;:!?]?", w)]
    assert len(words) >= 5, text
    assert len(plain) / len(words) >= 0.85, text
    common = [w for w in plain if w.strip(".,;:!?").lower() in COMMON_WORDS]
    assert len(common) / len(words) >= 0.3, text
    assert "Paris" in text, text
    assert "Ġ" not in text and "Ċ" not in text and "<|" not in text, text


def test_affine_int4_first_greedy_tokens_equal_fp32(smollm2_bundle: Callable[..., Path]) -> None:
    # The affine scheme stores the GGUF's own 4-bit blocks, so its greedy path follows the
    # fp32 conversion's. The default symmetric scheme re-rounds them and parts earlier at
    # near-ties; its agreement is measured by benchmarks/quality.py (docs/bundle.md).
    question = "Give me three tips for staying healthy."
    got = _generate(smollm2_bundle("int4", int4_scheme="affine"), 8, question)
    want = _generate(smollm2_bundle("fp32"), 8, question)
    assert want.usage.completion_tokens == 8, want
    assert got.token_ids == want.token_ids, (got.text, want.text)


def test_calibrated_int4_tracks_fp32_closer_than_rounding_to_nearest(
    smollm2_bundle: Callable[..., Path],
) -> None:
    """Teacher-forced over the benchmark's quality texts: agreement up, perplexity down.

    Measured on all four texts: 80.0 % / 1.089 against 70.6 % / 1.335 (docs/benchmarks.md);
    on the first two texts (224 positions) they measured 78.6 % / 1.052 against 68.8 % / 1.259.
    """
    from benchmarks.quality import compare, load_texts, teacher_force

    texts = load_texts()[:2]
    reference = teacher_force(smollm2_bundle("fp32"), texts, threads=2)
    calibrated = smollm2_bundle("int4")
    assert verify_bundle(calibrated).quantization.calibrated
    better = compare(teacher_force(calibrated, texts, threads=2), reference)
    plain = compare(teacher_force(smollm2_bundle("int4", calibrate=False), texts, threads=2),
                    reference)
    assert float(better["top1_agreement"]) > float(plain["top1_agreement"]) + 0.03, (better, plain)
    assert float(better["ppl_ratio"]) < float(plain["ppl_ratio"]) - 0.05, (better, plain)


def test_gguf_tokenizer_facts_follow_the_gguf(smollm2_bundle: Callable[..., Path]) -> None:
    """The known faults of transformers' GGUF tokenizer are fixed (see docs/bundle.md)."""
    from tokenizers import Tokenizer

    bundle = smollm2_bundle("int4")
    manifest = verify_bundle(bundle)
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    arch = manifest.architecture
    assert tok.token_to_id("<|im_end|>") in arch.eos_token_ids
    assert tok.token_to_id("<|im_start|>") not in arch.eos_token_ids
    assert arch.add_bos_token is False
    assert tok.encode("Hi").ids == tok.encode("Hi", add_special_tokens=False).ids
    text = "Line one\n  x = 42 # café"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.encode("<|im_start|>").ids == [tok.token_to_id("<|im_start|>")]
    merges = json.loads((bundle / "tokenizer.json").read_text())["model"]["merges"]
    assert isinstance(merges[0], str)  # the form that costs the device least memory to read
    assert manifest.source.kind == "gguf" and manifest.source.license == "apache-2.0"
    assert manifest.quantization.bits == 4 and manifest.quantization.unquantized == []
    generation = json.loads((bundle / "generation.json").read_text())
    assert 0 < generation["max_tokens"] <= arch.context_length
