"""Per-pixel image stackers for class averaging.

Every stacker is a callable ``stacker(images, weights=None) -> result`` where

* ``images`` has shape ``(n, ...)``: ``n`` images of any trailing shape, e.g.
  ``(n, N, N)`` whole images or ``(n, P)`` pixel tiles;
* ``weights`` is ``None`` (uniform) or a non-negative array of shape ``(n,)``;
* ``result`` has the trailing shape ``...`` and dtype float64 (inputs of any
  real dtype are converted to float64 before arithmetic).

Each output pixel depends only on that pixel's column ``images[:, pixel]``, so
any stacker can be applied tile by tile (:func:`stack_in_tiles`). The mean can
also be streamed over particle chunks (:class:`StreamingMean`).

Weighted order statistics are defined so that integer weights give the same
result as repeating each image ``weight`` times (see :class:`MedianImageStacker`
and :class:`WinsorizedImageStacker`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
from numba import njit

__all__ = [
    "ImageStacker",
    "MeanImageStacker",
    "MedianImageStacker",
    "SigmaRejectionImageStacker",
    "WinsorizedImageStacker",
    "StreamingMean",
    "stack_in_tiles",
]


def _as_stack(
    images: np.ndarray, weights: np.ndarray | None, float64: bool = True
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Validate a stack and flatten it.

    Returns ``(x, w, trailing_shape)``: ``x`` float64 of shape ``(n, P)`` (with
    ``float64=False``, float32 images stay float32), ``w`` float64 of shape ``(n,)``
    (ones when ``weights`` is None).
    """
    images = np.asarray(images)
    if images.ndim == 0 or images.shape[0] == 0:
        raise ValueError(f"empty stack: images must have shape (n, ...) with n >= 1, "
                         f"got shape {images.shape}")
    n = images.shape[0]
    x = images.reshape(n, -1)
    if float64 or x.dtype != np.float32:
        x = x.astype(np.float64, copy=False)
    return x, check_weights(weights, n), images.shape[1:]


@njit(cache=True, nogil=True)
def _add_weighted(x, w, total):  # pragma: no cover - numba
    """``total[p] += sum_i w[i] * x[i, p]`` in float64, image after image."""
    for i in range(x.shape[0]):
        wi = w[i]
        row = x[i]
        for p in range(x.shape[1]):
            total[p] += wi * row[p]


def check_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Per-image weights ``(n,)`` float64: ones for ``None``; finite and non-negative."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) to match {n} images, "
                         f"got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite")
    if np.any(w < 0):
        raise ValueError(f"weights must be non-negative, got minimum {w.min()}")
    return w


class ImageStacker(ABC):
    """Base class: validates input, flattens trailing axes, restores them."""

    def __call__(self, images: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Stack ``images`` ``(n, ...)`` with optional ``weights`` ``(n,)``.

        Returns
        -------
        np.ndarray
            float64, shape ``images.shape[1:]``.

        Raises
        ------
        ValueError
            Empty stack, weights of the wrong shape, negative or non-finite
            weights, or weights summing to zero.
        """
        x, w, shape = _as_stack(images, weights)
        if w.sum() <= 0:
            raise ValueError("weights sum to zero: nothing to stack")
        return self._stack(x, w).reshape(shape)

    @abstractmethod
    def _stack(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Per-column statistic of ``x`` ``(n, P)`` with weights ``w`` ``(n,)`` -> ``(P,)``."""


class StreamingMean:
    """Single-pass weighted mean over chunks of images.

    Holds only two arrays of the image shape (float64), so a class of any size
    can be averaged chunk by chunk.

    Examples
    --------
    >>> acc = StreamingMean()
    >>> for chunk, w in chunks:          # doctest: +SKIP
    ...     acc.add(chunk, w)
    >>> average = acc.result()           # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self._weight = 0.0
        self._shape: tuple[int, ...] = ()

    def add(self, images: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Accumulate ``images`` ``(n, ...)`` with weights ``(n,)`` (None = ones).

        All chunks must share the trailing shape. A chunk whose weights are
        all zero is allowed (it contributes nothing).
        """
        x, w, shape = _as_stack(images, weights, float64=False)
        if self._sum is None:
            self._sum = np.zeros(x.shape[1])
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(f"chunk image shape {shape} differs from earlier chunks {self._shape}")
        if x.dtype == np.float32:  # no float64 copy, no BLAS threads beside csplugin's own
            _add_weighted(np.ascontiguousarray(x), w, self._sum)
        else:
            self._sum += w @ x
        self._weight += float(w.sum())

    def merge(self, other: StreamingMean) -> None:
        """Add the images of ``other`` (e.g. a worker thread's chunk) to this mean."""
        if other._sum is None:
            return
        if self._sum is None:
            self._sum, self._shape = other._sum.copy(), other._shape
        elif other._shape != self._shape:
            raise ValueError(f"image shape {other._shape} differs from {self._shape}")
        else:
            self._sum += other._sum
        self._weight += other._weight

    @property
    def weight_total(self) -> float:
        """Sum of all weights added so far."""
        return self._weight

    def result(self) -> np.ndarray:
        """Weighted mean so far: float64 array of the image shape."""
        if self._sum is None or self._weight <= 0:
            raise ValueError("no images with positive weight have been added")
        return (self._sum / self._weight).reshape(self._shape)


class MeanImageStacker(ImageStacker):
    """Per-pixel weighted mean ``sum_i w_i x_i / sum_i w_i`` (same as ``np.average``).

    For classes too large for memory use :class:`StreamingMean` instead.
    """

    def _stack(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (w @ x) / w.sum()


class MedianImageStacker(ImageStacker):
    """Per-pixel (weighted) median.

    For each pixel, sort its values ``v_1 <= ... <= v_n`` with weights carried
    along, cumulative weights ``C_j`` and total ``W``:

    * lower median = smallest ``v_j`` with ``C_j >= W/2``;
    * upper median = smallest ``v_j`` with ``C_j > W/2``;
    * median = (lower + upper) / 2.

    With uniform weights this is ``np.median``; with integer weights it equals
    ``np.median`` of the stack with each image repeated ``weight`` times.
    Zero-weight images are ignored.

    Cost per tile: one sort of the ``(n, P)`` column block (``O(n log n)`` per
    pixel); unweighted stacks use ``np.median`` (partition, ``O(n)``).
    """

    def _stack(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        if np.all(w == w[0]):
            return np.median(x, axis=0)
        order = np.argsort(x, axis=0)
        xs = np.take_along_axis(x, order, axis=0)
        ws = w[order]
        del order  # bound the working set (see stack_in_tiles)
        cum = np.cumsum(ws, axis=0, out=ws)
        half = cum[-1] / 2
        lower = np.take_along_axis(xs, np.argmax(cum >= half, axis=0)[None], axis=0)[0]
        upper = np.take_along_axis(xs, np.argmax(cum > half, axis=0)[None], axis=0)[0]
        return (lower + upper) / 2


class SigmaRejectionImageStacker(ImageStacker):
    """Per-pixel iterative sigma-clipped (weighted) mean.

    For each pixel independently: compute the weighted mean ``m`` and weighted
    population standard deviation ``s`` of its kept values, reject values with
    ``|x - m| > rejection_sigma * s``, and repeat on the kept values until
    nothing changes or ``max_iterations`` rounds have run. Rejection is
    cumulative (a rejected value is never readmitted). A round that would
    reject every value of a pixel is not applied to that pixel. The result is
    the weighted mean of the kept values.

    Parameters
    ----------
    rejection_sigma
        Rejection threshold in standard deviations, > 0.
    max_iterations
        Maximum number of rejection rounds, >= 1.
    """

    def __init__(self, rejection_sigma: float = 3.0, max_iterations: int = 10) -> None:
        if not rejection_sigma > 0:
            raise ValueError(f"rejection_sigma must be > 0, got {rejection_sigma}")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.rejection_sigma = float(rejection_sigma)
        self.max_iterations = int(max_iterations)

    def _stack(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        kept = np.ones(x.shape, dtype=bool)
        wcol = w[:, None]
        for _ in range(self.max_iterations):
            wk = wcol * kept
            total = wk.sum(axis=0)
            mean = (wk * x).sum(axis=0) / total
            std = np.sqrt((wk * (x - mean) ** 2).sum(axis=0) / total)
            new = kept & (np.abs(x - mean) <= self.rejection_sigma * std)
            emptied = (wcol * new).sum(axis=0) <= 0
            new[:, emptied] = kept[:, emptied]
            if np.array_equal(new, kept):
                break
            kept = new
        wk = wcol * kept
        return (wk * x).sum(axis=0) / wk.sum(axis=0)


class WinsorizedImageStacker(ImageStacker):
    """Per-pixel winsorized (weighted) mean.

    Each pixel's column is clipped at its *own* lower and upper quantiles and
    then averaged (unlike ASPIRE's winsorizing stacker, which clips the whole
    flattened stack at pooled quantiles, so pixels with large values get
    clipped by statistics of other pixels).

    For a pixel with sorted values ``v_1 <= ... <= v_n``, weights carried
    along, cumulative weight ``C_j = w_1 + ... + w_j``, reverse cumulative
    weight ``R_j = w_j + ... + w_n`` and total ``W``:

    * lower clip ``L`` = smallest ``v_j`` with ``C_j > percentile * W``;
    * upper clip ``U`` = largest ``v_j`` with ``R_j > percentile * W``;
    * result = ``sum_i w_i clip(x_i, L, U) / W``.

    With uniform weights this replaces the ``floor(percentile * n)`` smallest
    and largest values by their nearest kept neighbours, exactly like
    ``scipy.stats.mstats.winsorize(column, limits=(percentile, percentile))``;
    integer weights equal repeating images.

    Parameters
    ----------
    percentile
        Fraction clipped at each end, in ``[0, 0.5)``; 0.1 clips at the 10th
        and 90th percentiles.
    """

    def __init__(self, percentile: float = 0.1) -> None:
        if not 0 <= percentile < 0.5:
            raise ValueError(f"percentile must be in [0, 0.5), got {percentile}")
        self.percentile = float(percentile)

    def _stack(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        order = np.argsort(x, axis=0)
        xs = np.take_along_axis(x, order, axis=0)
        ws = w[order]
        del order  # bound the working set (see stack_in_tiles)
        cut = self.percentile * w.sum()
        lo = np.argmax(np.cumsum(ws, axis=0) > cut, axis=0)
        rcum = np.cumsum(ws[::-1], axis=0, out=ws)  # rcum[k] = R_{n-1-k}
        hi = x.shape[0] - 1 - np.argmax(rcum > cut, axis=0)
        low = np.take_along_axis(xs, lo[None], axis=0)
        high = np.take_along_axis(xs, hi[None], axis=0)
        return (w @ np.clip(x, low, high)) / w.sum()


def stack_in_tiles(
    read_tile: Callable[[slice], np.ndarray],
    n: int,
    shape: tuple[int, ...],
    stacker: ImageStacker,
    weights: np.ndarray | None = None,
    max_bytes: int = 1 << 30,
) -> np.ndarray:
    """Apply a per-pixel stacker to a stack too large for memory, tile by tile.

    The image pixels are flattened (C order) to ``P = prod(shape)`` columns and
    split into consecutive tiles of ``t = max(1, max_bytes // (4 * n))`` pixels,
    so one float32 tile ``(n, t)`` takes at most ``max_bytes`` (or one column,
    if a single column is larger).

    Cost: ``ceil(P / t)`` calls of ``read_tile``, i.e. about
    ``ceil(n * P * 4 / max_bytes)`` passes over the particle data (each pass
    reads all ``n`` particles but keeps only ``t`` pixels). Peak memory is a
    small multiple of ``max_bytes``: besides the tile itself, the stacker's
    working arrays peak at about 2x (mean), 4x (unweighted median) and 8x
    (weighted median, winsorized, sigma rejection) ``max_bytes`` (measured
    with tracemalloc: float64 copy, sort index, sorted copy, cumulative
    weights). Choose ``max_bytes`` accordingly.

    Parameters
    ----------
    read_tile
        ``read_tile(pixel_slice)`` returns the values of flattened pixels
        ``pixel_slice`` for all ``n`` images, shape ``(n, len(pixel_slice))``.
    n
        Number of images.
    shape
        Image shape, e.g. ``(N, N)``.
    stacker
        Any :class:`ImageStacker`.
    weights
        Per-image weights ``(n,)`` or None (uniform).
    max_bytes
        Budget for one float32 tile.

    Returns
    -------
    np.ndarray
        float64, shape ``shape``; equal to ``stacker(full_stack, weights)``.
    """
    if n < 1:
        raise ValueError(f"empty stack: n must be >= 1, got {n}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    n_pixels = math.prod(shape)
    tile = max(1, max_bytes // (4 * n))
    out = np.empty(n_pixels)
    for start in range(0, n_pixels, tile):
        cols = slice(start, min(start + tile, n_pixels))
        block = np.asarray(read_tile(cols))
        expected = (n, cols.stop - cols.start)
        if block.shape != expected:
            raise ValueError(f"read_tile({cols}) returned shape {block.shape}, expected {expected}")
        out[cols] = stacker(block, weights)
    return out.reshape(shape)
