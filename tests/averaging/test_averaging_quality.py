"""Image quality functions: known answers, configurable bands, weights in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from csplugin.averaging import (
    BandedSNRImageQualityFunction,
    BandpassImageQualityFunction,
    BumpWeightedVarianceImageQualityFunction,
    RampWeightedVarianceImageQualityFunction,
    VarianceImageQualityFunction,
    WeightedImageQualityMixin,
)


def _radius(box: int) -> np.ndarray:
    y, x = np.mgrid[:box, :box] - box // 2
    return np.hypot(x, y) / (box / 2)


def test_variance_scores_images_and_stacks() -> None:
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(4, 16, 16))
    f = VarianceImageQualityFunction()
    np.testing.assert_allclose(f(stack), stack.reshape(4, -1).var(axis=1))
    assert isinstance(f(stack[0]), float)
    with pytest.raises(ValueError):
        f(np.zeros((2, 3, 4)))


def test_banded_snr_known_answer_and_configurable_bands() -> None:
    box = 64
    r = _radius(box)
    image = np.zeros((box, box))
    checker = np.indices((box, box)).sum(axis=0) % 2 * 2.0 - 1.0  # ±1: variance 1 in any band
    image[r < 0.5] = 3 * checker[r < 0.5]  # signal: variance ~9
    image[r >= 0.5] = checker[r >= 0.5]    # background: variance ~1
    f = BandedSNRImageQualityFunction()
    assert f(image) == pytest.approx(9.0, rel=0.02)
    # the bands are real parameters (ASPIRE's were fixed keyword defaults of _function)
    assert BandedSNRImageQualityFunction(inner=0.5, outer=(0.3, 0.45))(image) \
        == pytest.approx(1.0, rel=0.02)
    with pytest.raises(ValueError, match="too small"):
        BandedSNRImageQualityFunction(inner=0.01)(image)


@pytest.mark.parametrize("cycles, inside", [(8, True), (2, False), (24, False)])
def test_bandpass_scores_the_power_in_the_band(cycles: int, inside: bool) -> None:
    box = 64
    x = np.arange(box)
    image = np.tile(1.5 * np.cos(2 * np.pi * cycles * x / box), (box, 1)) + 4.0  # f = c/64
    score = BandpassImageQualityFunction(low=0.05, high=0.25)(image)
    assert score == pytest.approx(1.5**2 / 2 if inside else 0.0, abs=1e-9)


def test_ramp_weights_never_go_negative() -> None:
    f = RampWeightedVarianceImageQualityFunction()
    w = f.weights(64)
    r = _radius(64)
    assert w.min() >= 0 and w.max() == pytest.approx(1.0)
    assert np.all(w[r >= 1] == 0)  # ASPIRE's np.max(1 - r, 0) gives -0.41 in the corners
    np.testing.assert_allclose(w[r < 1], 1 - r[r < 1])
    image = np.random.default_rng(1).normal(size=(64, 64))
    assert f(image) == pytest.approx(np.var(image * w))


def test_bump_weights_are_smooth_and_zero_outside() -> None:
    f = BumpWeightedVarianceImageQualityFunction()
    w = f.weights(64)
    r = _radius(64)
    assert w[32, 32] == pytest.approx(1.0)
    assert np.all(w[r >= 1] == 0) and np.all(w[r < 1] > 0)
    np.testing.assert_allclose(w[r < 0.9], np.exp(1 - 1 / (1 - r[r < 0.9] ** 2)))


def test_caches_belong_to_each_instance() -> None:
    a, b = RampWeightedVarianceImageQualityFunction(), RampWeightedVarianceImageQualityFunction()
    a.weights(32)
    a.radius(32)
    assert 32 in a._weights_cache and 32 not in b._weights_cache
    assert 32 in a._grid_cache and 32 not in b._grid_cache


def test_weights_outside_unit_interval_are_refused() -> None:
    class Bad(WeightedImageQualityMixin, VarianceImageQualityFunction):
        def _weight_function(self, r: np.ndarray) -> np.ndarray:
            return 1 - r  # ASPIRE's ramp

    with pytest.raises(ValueError, match=r"leave \[0, 1\]"):
        Bad()(np.ones((16, 16)))
