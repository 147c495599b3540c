"""Tests for csplugin.engines.stackers against direct numpy/scipy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats.mstats import winsorize

from csplugin.engines.stackers import (
    MeanImageStacker,
    MedianImageStacker,
    SigmaRejectionImageStacker,
    StreamingMean,
    WinsorizedImageStacker,
    stack_in_tiles,
)


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(37, 5, 6)).astype(np.float32)


@pytest.fixture
def int_weights() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 4, size=37).astype(np.float64)


def winsorized_reference(images: np.ndarray, p: float) -> np.ndarray:
    cols = images.reshape(images.shape[0], -1).astype(np.float64)
    out = [winsorize(cols[:, j], limits=(p, p)).mean() for j in range(cols.shape[1])]
    return np.array(out).reshape(images.shape[1:])


ALL_STACKERS = [
    MeanImageStacker(),
    MedianImageStacker(),
    SigmaRejectionImageStacker(rejection_sigma=1.5),
    WinsorizedImageStacker(percentile=0.2),
]


def test_mean_matches_np_average(stack: np.ndarray, int_weights: np.ndarray) -> None:
    res = MeanImageStacker()(stack)
    assert res.dtype == np.float64 and res.shape == (5, 6)
    np.testing.assert_allclose(res, stack.astype(np.float64).mean(axis=0), rtol=1e-12)
    w = int_weights + 0.3
    np.testing.assert_allclose(MeanImageStacker()(stack, w), np.average(stack, axis=0, weights=w),
                               rtol=1e-6)


def test_median_matches_np_median(stack: np.ndarray) -> None:
    np.testing.assert_array_equal(MedianImageStacker()(stack), np.median(stack.astype(np.float64),
                                                                         axis=0))
    even = stack[:36]
    np.testing.assert_array_equal(MedianImageStacker()(even), np.median(even.astype(np.float64),
                                                                        axis=0))


def test_weighted_median_uniform_weights_is_np_median(stack: np.ndarray) -> None:
    even = stack[:36]
    # Non-equal-valued path: one image with zero weight, rest uniform.
    w = np.ones(37)
    w[36] = 0.0
    np.testing.assert_array_equal(MedianImageStacker()(stack, w),
                                  np.median(even.astype(np.float64), axis=0))


def test_weighted_median_definition() -> None:
    col = np.array([3.0, 1.0, 2.0, 10.0])[:, None]
    # sorted values 1, 2, 3, 10 carry weights 1, 1, 0.5, 1: cumulative 1, 2, 2.5, 3.5; half 1.75
    assert MedianImageStacker()(col, np.array([0.5, 1.0, 1.0, 1.0]))[0] == 2.0
    # exactly half at value 2 -> midpoint of 2 and the next value 3
    assert MedianImageStacker()(col, np.array([1.0, 1.0, 1.0, 1.0]))[0] == 2.5


def test_winsorized_matches_scipy_per_column(stack: np.ndarray) -> None:
    for p in (0.0, 0.1, 0.2, 0.29, 0.49):
        np.testing.assert_allclose(WinsorizedImageStacker(p)(stack), winsorized_reference(stack, p),
                                   rtol=1e-12, atol=1e-12)


def test_winsorized_is_per_pixel_not_pooled() -> None:
    """ASPIRE clips the flattened stack; we clip each pixel's column separately."""
    n = 20
    images = np.zeros((n, 2, 2))
    images[:, 0, 0] = 100.0 + np.arange(n)
    images[:2, 0, 0] = 1e4  # outliers in one pixel only
    images[:, 0, 1] = 0.01 * np.arange(n)
    images[:, 1, 0] = -0.01 * np.arange(n)
    images[:, 1, 1] = 0.5 + 0.01 * np.arange(n)
    res = WinsorizedImageStacker(0.1)(images)
    np.testing.assert_allclose(res, winsorized_reference(images, 0.1), rtol=1e-12)
    pooled = winsorize(images.ravel(), limits=(0.1, 0.1)).reshape(images.shape).mean(axis=0)
    assert 100 < res[0, 0] < 120  # outliers clipped to the pixel's own 90th percentile
    # pooled clipping (8 of 80 values per end) also clips clean values 114..119 of that pixel
    assert pooled[0, 0] < res[0, 0] - 1
    assert not np.allclose(res, pooled)


def test_sigma_rejection_recovers_clean_mean() -> None:
    rng = np.random.default_rng(2)
    clean = rng.uniform(-1, 1, size=(200, 3))  # no tails beyond 1.8 sigma
    dirty = clean.copy()
    dirty[:6, 1] = 50.0
    dirty[6:9, 2] = -80.0
    res = SigmaRejectionImageStacker(3.0)(dirty)
    expected = [clean[:, 0].mean(), clean[6:, 1].mean(), np.r_[clean[:6, 2], clean[9:, 2]].mean()]
    np.testing.assert_allclose(res, expected, rtol=1e-12)
    assert abs(dirty[:, 1].mean() - res[1]) > 1


def test_sigma_rejection_never_empties_a_pixel() -> None:
    col = np.array([-1.0, 1.0])[:, None]  # both values are 1 sigma away
    assert SigmaRejectionImageStacker(0.5)(col)[0] == 0.0


@pytest.mark.parametrize("stacker", ALL_STACKERS, ids=lambda s: type(s).__name__)
def test_integer_weights_equal_repetition(stacker, stack: np.ndarray,
                                          int_weights: np.ndarray) -> None:
    repeated = np.repeat(stack, int_weights.astype(int), axis=0)
    np.testing.assert_allclose(stacker(stack, int_weights), stacker(repeated), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("stacker", ALL_STACKERS, ids=lambda s: type(s).__name__)
def test_tiled_equals_untiled(stacker, stack: np.ndarray, int_weights: np.ndarray) -> None:
    n = stack.shape[0]
    flat = stack.reshape(n, -1)
    calls = []

    def read_tile(cols: slice) -> np.ndarray:
        calls.append(cols)
        return flat[:, cols]

    max_bytes = 7 * 4 * n  # 7 pixels per tile -> ceil(30 / 7) = 5 passes
    tiled = stack_in_tiles(read_tile, n, (5, 6), stacker, int_weights, max_bytes=max_bytes)
    assert len(calls) == 5
    np.testing.assert_array_equal(tiled, stacker(stack, int_weights))


def test_streaming_mean_equals_one_shot(stack: np.ndarray, int_weights: np.ndarray) -> None:
    acc = StreamingMean()
    for lo, hi in [(0, 10), (10, 11), (11, 37)]:
        acc.add(stack[lo:hi], int_weights[lo:hi])
    np.testing.assert_allclose(acc.result(), MeanImageStacker()(stack, int_weights), rtol=1e-12)
    assert acc.weight_total == int_weights.sum()


@pytest.mark.parametrize("stacker", ALL_STACKERS, ids=lambda s: type(s).__name__)
def test_validation(stacker, stack: np.ndarray) -> None:
    with pytest.raises(ValueError, match="empty stack"):
        stacker(np.empty((0, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        stacker(stack, np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        stacker(stack, -np.ones(37))
    with pytest.raises(ValueError, match="sum to zero"):
        stacker(stack, np.zeros(37))


def test_parameter_validation() -> None:
    for sigma in (0.0, -1.0):
        with pytest.raises(ValueError, match="rejection_sigma"):
            SigmaRejectionImageStacker(sigma)
    for p in (-0.1, 0.5, 0.7):
        with pytest.raises(ValueError, match="percentile"):
            WinsorizedImageStacker(p)
    with pytest.raises(ValueError, match="no images"):
        StreamingMean().result()
    acc = StreamingMean()
    acc.add(np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="differs"):
        acc.add(np.ones((2, 4, 4)))


def test_streaming_mean_of_float32_chunks_equals_float64_and_merges() -> None:
    """float32 chunks are added without a float64 copy (numba kernel); same mean as float64
    to rounding; a worker's mean merges into another."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 7, 9)).astype(np.float32)
    w = rng.uniform(0.1, 2.0, 50)
    whole = StreamingMean()
    whole.add(x.astype(np.float64), w)
    parts = [StreamingMean() for _ in range(3)]
    for part, rows in zip(parts, np.array_split(np.arange(50), 3)):
        part.add(x[rows], w[rows])
    merged = StreamingMean()
    for part in parts:
        merged.merge(part)
    merged.merge(StreamingMean())  # an empty part adds nothing
    np.testing.assert_allclose(merged.result(), whole.result(), rtol=1e-12, atol=1e-12)
    assert merged.weight_total == pytest.approx(w.sum())
    bad = StreamingMean()
    bad.add(np.zeros((1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="differs"):
        merged.merge(bad)
