"""Error-compensated int4 rounding (converters.gptq) and the calibration pass that feeds it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from converters.gptq import gptq_blocks, gram
from converters.int4_blocks import searched_blocks

from .test_int4_calibrated import _dequantize


def _activations(rng: np.random.Generator, tokens: int, mix: np.ndarray) -> np.ndarray:
    """Correlated activations with uneven channel scales, like a transformer's."""
    k = len(mix)
    spread = np.linspace(0.2, 3.0, k)
    return ((rng.normal(size=(tokens, k)) * spread) @ mix).astype(np.float32)


def _relative_error(x: np.ndarray, w: np.ndarray, approx: np.ndarray) -> float:
    ref = x @ w
    return float(np.mean((x @ approx - ref) ** 2) / np.mean(ref**2))


def test_compensated_rounding_beats_plain_search_on_unseen_activations() -> None:
    rng = np.random.default_rng(11)
    k, n = 128, 96
    mix = np.eye(k) + 1.5 * rng.normal(size=(k, k)) / np.sqrt(k)  # strongly correlated
    w = rng.normal(0, 0.02, (k, n)).astype(np.float32)
    seen, unseen = _activations(rng, 800, mix), _activations(rng, 800, mix)
    h = gram(seen)
    packed, scales, zeros = gptq_blocks(w, h, 32)
    assert zeros is None and packed.shape == (n, k // 32, 16) and scales.shape == (n * k // 32,)
    compensated = _dequantize(packed, scales, k)
    searched = searched_blocks(w, 32, np.diag(h))
    plain = _relative_error(unseen, w, _dequantize(searched[0], searched[1], k))
    assert _relative_error(unseen, w, compensated) < 0.8 * plain


def test_a_ragged_matrix_is_padded_and_dead_channels_are_still_rounded() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (40, 8)).astype(np.float32)  # K not a multiple of the block
    x = rng.normal(size=(64, 40)).astype(np.float32)
    x[:, 7] = 0.0  # a channel the calibration text never lights up
    packed, scales, _ = gptq_blocks(w, gram(x), 32)
    approx = _dequantize(packed, scales, 40)
    step = np.repeat(np.abs(scales).reshape(8, 2), 32, axis=1)[:, :40].T
    assert np.abs(approx[7] - w[7]).max() <= step[7].max()  # dead channel: plain rounding
    assert _relative_error(x, w, approx) < 0.01


@pytest.mark.parametrize(("arch", "graph"), [("qwen2", "gqa"), ("llama", "optimum")])
def test_calibration_sees_every_prompt_position_at_the_lm_head(
    tiny_bundle: Callable[..., Path], arch: str, graph: str
) -> None:
    import onnx

    from converters.calibration import calibrate
    from converters.quantize import lm_head_node

    bundle = tiny_bundle(arch, "fp32", graph)
    model_path = bundle / "model.onnx"
    ids = list(range(3, 40))
    calibration = calibrate(model_path, ids)
    head = lm_head_node(onnx.load(str(model_path), load_external_data=False))
    assert head is not None and head in calibration
    gram_head = calibration.gram(head)
    # A rank-one Gram matrix would mean the head saw only the last position.
    assert np.linalg.matrix_rank(gram_head, tol=1e-6 * np.abs(gram_head).max()) > 1
    assert not (bundle / "calibration.onnx").exists()
