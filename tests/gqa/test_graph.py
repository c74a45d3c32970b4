"""The gqa graph computes what the PyTorch model computes, prompt and decode alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edge_runtime.engine.runners.single import SingleSequence
from edge_runtime.errors import ContextLengthExceeded
from tests.gqa.conftest import MAX_LENGTH, Exported

ARCHS = ["llama", "qwen2"]
PROMPT = [5, 17, 33, 100, 200, 7, 9, 42, 61, 3]


def torch_last_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def runner_for(exported: Exported, max_length: int = MAX_LENGTH) -> SingleSequence:
    return exported.runner(max_length)


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_and_decode_logits_match_transformers(
    gqa_export: Callable[[str], Exported], arch: str
) -> None:
    exported = gqa_export(arch)
    runner = runner_for(exported)
    ids = list(PROMPT)
    logits = runner.forward(np.array(ids))
    for _ in range(5):
        expected = torch_last_logits(exported.torch_model, ids)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
        ids.append(int(np.argmax(expected)))
        logits = runner.forward(np.array(ids[-1:]))
    assert runner.length == len(ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_32_tokens_equal_transformers_generate(
    gqa_export: Callable[[str], Exported], arch: str
) -> None:
    import torch

    exported = gqa_export(arch)
    with torch.no_grad():
        out = exported.torch_model.generate(
            torch.tensor([PROMPT]), max_new_tokens=32, do_sample=False, eos_token_id=None
        )
    expected = out[0, len(PROMPT) :].tolist()
    runner = runner_for(exported)
    for _ in range(2):  # the second pass proves reset() really starts over
        runner.reset()
        logits = runner.forward(np.array(PROMPT))
        got: list[int] = []
        for _ in range(32):
            got.append(int(np.argmax(logits)))
            logits = runner.forward(np.array(got[-1:]))
        assert got == expected


def test_prompt_fed_in_chunks_gives_the_same_logits(gqa_export: Callable[[str], Exported]) -> None:
    exported = gqa_export("qwen2")
    whole = runner_for(exported).forward(np.array(PROMPT))
    chunked = runner_for(exported)
    chunked.forward(np.array(PROMPT[:4]))
    np.testing.assert_allclose(chunked.forward(np.array(PROMPT[4:])), whole, atol=1e-5, rtol=0)


def test_overflowing_the_cache_is_refused(gqa_export: Callable[[str], Exported]) -> None:
    runner = runner_for(gqa_export("llama"), max_length=12)
    runner.forward(np.array(PROMPT))
    with pytest.raises(ContextLengthExceeded):
        runner.forward(np.array([1, 2, 3]))
    assert runner.length == len(PROMPT)


def test_graph_has_an_untied_lm_head_and_last_position_logits(
    gqa_export: Callable[[str], Exported],
) -> None:
    import onnx

    exported = gqa_export("llama")
    model = onnx.load(str(exported.onnx_path))
    nodes = {n.name: n for n in model.graph.node}
    gather_inputs = {i for n in model.graph.node if n.op_type == "Gather" for i in n.input}
    head = nodes["/lm_head/MatMul"]
    assert head.input[1] not in gather_inputs  # a quantizer can turn it into MatMulNBits
    logits = next(o for o in exported.session().get_outputs() if o.name == "logits")
    assert logits.shape[1:] == [1, exported.arch.vocab_size]


def test_supports_only_the_built_architectures() -> None:
    from converters.gqa import supports

    assert supports("llama") and supports("qwen2")
    assert not supports("gpt2")


def test_variants_the_graph_cannot_compute_are_refused(
    tiny_hf_model: Callable[..., Any], tmp_path: Any
) -> None:
    import json
    import shutil

    from converters.errors import UnsupportedArchitecture
    from converters.gqa import export

    src = tmp_path / "sliding"
    shutil.copytree(tiny_hf_model("qwen2"), src)
    config = json.loads((src / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=16)
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture):
        export(src, tmp_path / "out", max_length=64)
