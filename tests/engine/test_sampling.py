"""Sampling options change the distribution the way their definitions say (known logits)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge_runtime.engine.sampling import (
    Sampler,
    SamplerConfig,
    apply_repetition_penalty,
    draw,
    filtered_distribution,
    softmax,
)

# Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
PROBS = np.array([0.5, 0.3, 0.15, 0.05])
LOGITS = np.log(PROBS).astype(np.float32)


def dist(**kwargs: Any) -> np.ndarray:
    return filtered_distribution(LOGITS, SamplerConfig(**{"temperature": 1.0, **kwargs}))


def test_temperature_one_keeps_the_model_distribution() -> None:
    np.testing.assert_allclose(dist(), PROBS, rtol=1e-6)


def test_temperature_divides_the_logits() -> None:
    for t in (0.5, 2.0):
        expected = PROBS ** (1 / t) / (PROBS ** (1 / t)).sum()
        np.testing.assert_allclose(dist(temperature=t), expected, rtol=1e-5)
    assert dist(temperature=0.5)[0] > PROBS[0] > dist(temperature=2.0)[0]


def test_top_k_keeps_the_k_best_in_proportion() -> None:
    got = dist(top_k=2)
    np.testing.assert_allclose(got, [0.5 / 0.8, 0.3 / 0.8, 0, 0], rtol=1e-6)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    assert np.count_nonzero(dist(top_p=0.75)) == 2
    assert np.count_nonzero(dist(top_p=0.85)) == 3
    assert np.count_nonzero(dist(top_p=0.4)) == 1
    np.testing.assert_allclose(dist(top_p=0.85)[:3], PROBS[:3] / 0.95, rtol=1e-6)


def test_top_p_over_a_wide_vocabulary() -> None:
    uniform = np.zeros(1000, dtype=np.float32)
    got = filtered_distribution(uniform, SamplerConfig(temperature=1.0, top_p=0.9005))
    assert np.count_nonzero(got) == 901


def test_min_p_drops_tokens_below_a_fraction_of_the_best() -> None:
    np.testing.assert_allclose(dist(min_p=0.5), [0.5 / 0.8, 0.3 / 0.8, 0, 0], rtol=1e-6)
    assert np.count_nonzero(dist(min_p=0.2)) == 3  # 0.15 >= 0.1, 0.05 < 0.1


def test_filters_combine() -> None:
    assert np.count_nonzero(dist(top_k=3, top_p=0.75)) == 2
    assert np.count_nonzero(dist(top_k=3, min_p=0.4)) == 2


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = np.array([2.0, -1.0, 3.0, 0.5], dtype=np.float32)
    apply_repetition_penalty(logits, np.array([0, 1]), 2.0)
    np.testing.assert_allclose(logits, [1.0, -2.0, 3.0, 0.5])


def test_repetition_penalty_changes_the_greedy_choice() -> None:
    logits = np.array([3.0, 2.5, 0.0], dtype=np.float32)
    plain = Sampler(SamplerConfig(), 3, history=[0])
    penalized = Sampler(SamplerConfig(repetition_penalty=1.5), 3, history=[0])
    assert plain.sample(logits) == 0
    assert penalized.sample(logits) == 1  # 3.0 / 1.5 = 2.0 < 2.5


def test_greedy_is_argmax() -> None:
    sampler = Sampler(SamplerConfig(temperature=0.0), 4, history=[])
    assert [sampler.sample(LOGITS) for _ in range(5)] == [0] * 5


def draws(config: SamplerConfig, count: int) -> list[int]:
    sampler = Sampler(config, PROBS.size, history=[])
    return [sampler.sample(LOGITS) for _ in range(count)]


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    config = SamplerConfig(temperature=1.0, seed=1234)
    assert draws(config, 200) == draws(config, 200)
    assert draws(config, 200) != draws(SamplerConfig(temperature=1.0, seed=99), 200)


def test_draws_follow_the_filtered_distribution() -> None:
    got = np.bincount(draws(SamplerConfig(temperature=1.0, top_k=2, seed=7), 4000), minlength=4)
    assert got[2] == got[3] == 0
    assert got[0] / 4000 == pytest.approx(0.625, abs=0.03)


def test_softmax_is_stable_for_large_logits() -> None:
    probs = softmax(np.array([1000.0, 999.0]))
    assert np.isfinite(probs).all()
    assert probs.sum() == pytest.approx(1.0)


def test_draw_finds_the_token_across_vocabulary_blocks() -> None:
    probs = np.zeros(151_936, dtype=np.float32)
    probs[[5, 3000, 150_000]] = [0.3, 0.2, 0.5]
    assert draw(probs, 0.0) == 5
    assert draw(probs, 0.29) == 5
    assert draw(probs, 0.31) == 3000
    assert draw(probs, 0.51) == 150_000
    assert draw(probs, 0.999999) == 150_000


def test_wide_vocabulary_draws_follow_the_distribution() -> None:
    logits = np.full(50_000, -30.0, dtype=np.float32)
    logits[[10, 20_000, 49_999]] = np.log([0.2, 0.3, 0.5])
    sampler = Sampler(SamplerConfig(temperature=1.0, seed=3), logits.size, history=[])
    got = np.bincount([sampler.sample(logits) for _ in range(3000)], minlength=logits.size)
    assert got[10] + got[20_000] + got[49_999] == 3000
    assert got[49_999] / 3000 == pytest.approx(0.5, abs=0.04)
    assert got[10] / 3000 == pytest.approx(0.2, abs=0.04)
