"""Image quality functions: a score per class average, higher = better.

``f(image)`` with an ``(L, L)`` image returns a float; ``f(stack)`` with ``(n, L, L)``
returns ``(n,)`` float64. Subclasses implement the vectorised :meth:`_function`.

Radial coordinate (all functions): ``r = hypot(x, y) / (L/2)`` with ``x = col - L//2``,
``y = row - L//2``: 0 at the centre, 1 at the middle of the box edges, sqrt(2) in the
corners. Grids and weights are cached per instance and per ``L`` (ASPIRE shares one
class-level dict between all instances).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from csplugin.core.conventions import centred_grid
from csplugin.engines import fft

__all__ = [
    "ImageQualityFunction",
    "VarianceImageQualityFunction",
    "BandedSNRImageQualityFunction",
    "BandpassImageQualityFunction",
    "WeightedImageQualityMixin",
    "RampWeightedVarianceImageQualityFunction",
    "BumpWeightedVarianceImageQualityFunction",
]


class ImageQualityFunction(ABC):
    """Base class: validates and vectorises; subclasses implement :meth:`_function`."""

    def __init__(self) -> None:
        self._grid_cache: dict[int, np.ndarray] = {}

    def __call__(self, images: ArrayLike) -> float | np.ndarray:
        """Score an ``(L, L)`` image (-> float) or an ``(n, L, L)`` stack (-> ``(n,)``)."""
        a = np.asarray(images, np.float64)
        if a.ndim not in (2, 3) or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"need (L, L) or (n, L, L) images, got shape {a.shape}")
        scores = np.asarray(self._function(a[None] if a.ndim == 2 else a), np.float64)
        return float(scores[0]) if a.ndim == 2 else scores

    @abstractmethod
    def _function(self, stack: np.ndarray) -> np.ndarray:
        """Scores ``(n,)`` of a float64 stack ``(n, L, L)``."""

    def radius(self, box: int) -> np.ndarray:
        """``(L, L)`` normalised radius ``r`` (module docstring), cached per instance."""
        if box not in self._grid_cache:
            y, x = centred_grid(box)
            self._grid_cache[box] = np.hypot(x, y) / (box / 2)
        return self._grid_cache[box]


class VarianceImageQualityFunction(ImageQualityFunction):
    """Variance of the whole image (population, ddof = 0)."""

    def _function(self, stack: np.ndarray) -> np.ndarray:
        return stack.reshape(len(stack), -1).var(axis=1)


class BandedSNRImageQualityFunction(ImageQualityFunction):
    """``var(image[r < inner]) / var(image[outer[0] < r < outer[1]])``: signal vs. background.

    Parameters
    ----------
    inner
        Radius of the signal disc (normalised ``r``), > 0.
    outer
        ``(low, high)`` radii of the background annulus, ``low < high``.
    """

    def __init__(self, inner: float = 0.5, outer: tuple[float, float] = (0.8, 1.0)) -> None:
        super().__init__()
        low, high = outer
        if not (inner > 0 and 0 <= low < high):
            raise ValueError(f"need inner > 0 and 0 <= outer[0] < outer[1], got {inner}, {outer}")
        self.inner, self.outer = float(inner), (float(low), float(high))

    def _function(self, stack: np.ndarray) -> np.ndarray:
        r = self.radius(stack.shape[-1])
        signal = r < self.inner
        background = (self.outer[0] < r) & (r < self.outer[1])
        if signal.sum() < 2 or background.sum() < 2:
            raise ValueError(f"L = {stack.shape[-1]} is too small for the bands r < {self.inner} "
                             f"and {self.outer[0]} < r < {self.outer[1]}")
        flat = stack.reshape(len(stack), -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return flat[:, signal.ravel()].var(axis=1) / flat[:, background.ravel()].var(axis=1)


class BandpassImageQualityFunction(ImageQualityFunction):
    """Variance of the band-passed image: the image's power between two spatial frequencies.

    ``(1/L⁴) Σ |F(k)|²`` over ``low <= |k| < high`` (cycles/pixel, Nyquist = 0.5), which by
    Parseval is the variance of the image filtered by that hard-edged annulus. A pure cosine
    of amplitude ``a`` and frequency in the band scores ``a²/2``; one outside scores 0.
    Mid frequencies carry the detail of a well-aligned average, so sharper averages score
    higher (the idea of MATLAB ASPIRE's ``cryo_sort_stack_bandpass``; ASPIRE-Python left
    this function unimplemented).

    Parameters
    ----------
    low, high
        Band edges in cycles/pixel, ``0 <= low < high``.
    """

    def __init__(self, low: float = 0.05, high: float = 0.25) -> None:
        super().__init__()
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high, got {low}, {high}")
        self.low, self.high = float(low), float(high)
        self._band_cache: dict[int, np.ndarray] = {}

    def _function(self, stack: np.ndarray) -> np.ndarray:
        box = stack.shape[-1]
        if box not in self._band_cache:
            f = np.fft.fftfreq(box)
            k = np.hypot(f[:, None], f[None, :])
            self._band_cache[box] = (self.low <= k) & (k < self.high)
        power = np.abs(fft.fft2(stack)) ** 2
        return power[:, self._band_cache[box]].sum(axis=1) / box**4


class WeightedImageQualityMixin:
    """Multiply images by a radial weight ``w(r)`` in [0, 1] before the parent function scores.

    Put it first in the bases: ``class F(WeightedImageQualityMixin, SomeImageQualityFunction)``
    and implement :meth:`_weight_function`. Weights are cached per instance and per ``L``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._weights_cache: dict[int, np.ndarray] = {}

    def _weight_function(self, r: np.ndarray) -> np.ndarray:
        """Weights for normalised radii ``r`` (any shape), vectorised, in [0, 1]."""
        raise NotImplementedError

    def weights(self, box: int) -> np.ndarray:
        """``(L, L)`` float64 weights in [0, 1] (ValueError if the weight function leaves it)."""
        if box not in self._weights_cache:
            r = self.radius(box)  # type: ignore[attr-defined]
            w = np.asarray(self._weight_function(r), np.float64)
            if not (np.all(w >= 0) and np.all(w <= 1)):
                raise ValueError(f"{type(self).__name__} weights leave [0, 1] "
                                 f"(min {w.min():.3g}, max {w.max():.3g})")
            self._weights_cache[box] = w
        return self._weights_cache[box]

    def _function(self, stack: np.ndarray) -> np.ndarray:
        return super()._function(stack * self.weights(stack.shape[-1]))  # type: ignore[misc]


class RampWeightedVarianceImageQualityFunction(WeightedImageQualityMixin,
                                               VarianceImageQualityFunction):
    """Variance of the image weighted by the ramp ``max(1 - r, 0)``: 1 at the centre, 0 from
    the edge midpoints outwards (never negative; ASPIRE's ``np.max(1 - r, 0)`` is ``1 - r``,
    -0.41 in the corners)."""

    def _weight_function(self, r: np.ndarray) -> np.ndarray:
        return np.maximum(1.0 - r, 0.0)


class BumpWeightedVarianceImageQualityFunction(WeightedImageQualityMixin,
                                               VarianceImageQualityFunction):
    """Variance of the image weighted by the bump ``exp(1 - 1/(1 - r²))`` for ``r < 1``, else 0
    (1 at the centre, smooth to 0 at the edge midpoints)."""

    def _weight_function(self, r: np.ndarray) -> np.ndarray:
        inside = r < 1
        with np.errstate(divide="ignore", over="ignore"):
            return np.where(inside, np.exp(1.0 - 1.0 / np.where(inside, 1.0 - r**2, 1.0)), 0.0)
