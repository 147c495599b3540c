r"""Rotational alignment and a likelihood distance between steerable coordinates.

For whitened coordinates ``z`` (unit noise variance, signal variance ``s`` per component,
:mod:`csplugin.averaging.rir.steerable_pca`), two images of the same view differ by an in-plane
rotation ``R(α)`` (``z_c -> z_c e^{-i k_c α}``) and, possibly, a mirror (``z -> conj(z)``).
Under a Gaussian model (signal ``~ N(0, s)``, independent noise ``~ N(0, 1)``) the log
likelihood ratio of "same view" against "unrelated" is, per real dimension,

.. math::

    \frac{s}{1+2s}\, x y \;-\; \frac{s^2}{2(1+s)(1+2s)}\,(x^2 + y^2),

a correlation that trusts strong components and a small norm penalty. For a query ``i`` it
ranks candidates ``j`` exactly as the squared distance

.. math::

    D_{ij} = \min_α \sum_c w_c \,\bigl|a_c z_{ic} - b_c e^{-i k_c α} z'_{jc}\bigr|^2,
    \quad a_c = \sqrt{\tfrac{1+s_c}{1+2s_c}},\; b_c = \tfrac{s_c}{\sqrt{(1+s_c)(1+2s_c)}},

(``z'`` the candidate, conjugated when mirrored; ``w_c = 1`` for ``k = 0`` and 2 for the
``±k`` pair otherwise) since ``a_c b_c`` is the correlation weight and ``b_c²`` twice the
penalty. ``D`` is non-negative but not symmetric: the query is compared with a shrunken
candidate. The minimum over ``α`` is found by one FFT over the angular frequencies on
``n_angles`` angles, a parabola through the best sample and its neighbours, and two
Newton steps on the trigonometric polynomial itself.

Angle convention: ``α`` is the rotation that brings the (mirrored) candidate onto the query,
i.e. :func:`csplugin.engines.transform.align_images` with angle ``α`` applied to the candidate's
image (after :func:`csplugin.core.conventions.mirror_y` when mirrored) aligns it to the query.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

from csplugin.engines.fft import fft

#: Bytes of one block of the correlation array.
BLOCK_BYTES = 64 << 20


@dataclass(frozen=True, eq=False)
class LikelihoodMatcher:
    """Aligns and compares steerable coordinates (see the module docstring).

    Parameters
    ----------
    ells
        ``(m,)`` angular frequency of each component, ascending.
    signal
        ``(m,)`` signal variance of each component in noise units (> 0), or None for the
        plain aligned Euclidean distance ``min_α Σ_c w_c |z_{ic} - e^{-ik_cα} z'_{jc}|²``
        (``a_c = b_c = 1``; e.g. particles against denoised templates).
    n_angles
        Angles tried (default: the power of 2 ≥ twice the number of frequencies, at least
        64: the correlation is a trigonometric polynomial, sampled above its Nyquist rate;
        the best sample is then refined).
    """

    ells: NDArray[np.int64]
    signal: NDArray[np.float64] | None
    n_angles: int | None = None
    _query_scale: NDArray[np.float32] = field(init=False, repr=False)
    _candidate_scale: NDArray[np.float32] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ells = np.asarray(self.ells, np.int64)
        if np.any(np.diff(ells) < 0):
            raise ValueError("components must be sorted by angular frequency")
        weight = np.where(ells == 0, 1.0, 2.0)
        if self.signal is None:
            query, candidate = np.sqrt(weight), np.sqrt(weight)
        else:
            s = np.maximum(np.asarray(self.signal, np.float64), 0.0)
            query = np.sqrt(weight * (1 + s) / (1 + 2 * s))
            candidate = np.sqrt(weight) * s / np.sqrt((1 + s) * (1 + 2 * s))
        n_angles = self.n_angles or max(64, 1 << int(np.ceil(np.log2(2 * (ells.max() + 1)))))
        object.__setattr__(self, "ells", ells)
        object.__setattr__(self, "n_angles", int(n_angles))
        object.__setattr__(self, "_query_scale", query.astype(np.float32))
        object.__setattr__(self, "_candidate_scale", candidate.astype(np.float32))

    def compare(self, queries: NDArray[np.complexfloating], table: NDArray[np.complexfloating],
                candidates: NDArray[np.integer], mirrored: NDArray[np.bool_],
                excess: bool = False) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Distances and aligning angles of each query's candidates.

        Parameters
        ----------
        queries
            ``(b, m)`` coordinates of the queries.
        table
            ``(n, m)`` coordinates the candidates index (never copied per candidate).
        candidates
            ``(b, C)`` rows of ``table`` to compare with each query.
        mirrored
            ``(b, C)`` bool: compare the candidate's mirror image.
        excess
            Return ``sqrt(max(D - D_self, 0))`` with ``D_self`` the query's distance to an
            exact copy of itself (``Σ w (a - b)² |z|²``, zero for the Euclidean matcher): 0
            for a copy, same order per query.

        Returns
        -------
        distances, angles
            ``(b, C)`` float32 ``sqrt(D)`` (or the excess) and ``α`` in ``[0, 2π)`` radians.
        """
        queries = np.ascontiguousarray(queries, np.complex64)
        table = np.ascontiguousarray(table, np.complex64)
        candidates = np.ascontiguousarray(candidates, np.int64)
        mirrored = np.ascontiguousarray(mirrored, np.bool_)
        b, c = candidates.shape
        if queries.shape != (b, len(self.ells)) or table.shape[1] != len(self.ells):
            raise ValueError(f"coordinates must have {len(self.ells)} columns and one query "
                             f"row per candidate row, got {queries.shape}, {table.shape}, "
                             f"{candidates.shape}")
        query_power = (np.abs(queries) ** 2 * self._query_scale**2).sum(axis=1)
        candidate_power = (np.abs(table) ** 2 * self._candidate_scale**2).sum(axis=1)
        if excess:  # the query's distance to its own copy is the baseline
            query_power = query_power - (np.abs(queries) ** 2 * (
                self._query_scale - self._candidate_scale) ** 2).sum(axis=1)
        weight = (self._query_scale * self._candidate_scale).astype(np.float32)
        step = max(1, BLOCK_BYTES // max(1, 8 * c * self.n_angles))  # cross spectra
        dist = np.empty((b, c), np.float32)
        angle = np.empty((b, c), np.float32)
        for first in range(0, b, step):
            sl = slice(first, min(first + step, b))
            cross = np.zeros((sl.stop - first, c, self.n_angles), np.complex64)
            _cross_spectra(queries[sl], table, candidates[sl], mirrored[sl], self.ells, weight,
                           cross)
            _, coarse = _peak(fft(cross, axis=-1).real)
            best, angle[sl] = _newton(cross[..., : self.ells[-1] + 1], coarse, self.n_angles)
            squared = query_power[sl, None] + candidate_power[candidates[sl]] - 2 * best
            dist[sl] = np.sqrt(np.maximum(squared, 0))
        return dist, angle


def _peak(corr: NDArray[np.floating]) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """Maximum over the last axis (``n`` angles ``2πt/n``) refined by a parabola through the
    best sample and its neighbours: ``(…,)`` value and angle in ``[0, 2π)``."""
    n = corr.shape[-1]
    peak = corr.argmax(axis=-1)
    y1 = np.take_along_axis(corr, peak[..., None], -1)[..., 0]
    y0 = np.take_along_axis(corr, ((peak - 1) % n)[..., None], -1)[..., 0]
    y2 = np.take_along_axis(corr, ((peak + 1) % n)[..., None], -1)[..., 0]
    curvature = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(curvature < 0, 0.5 * (y0 - y2) / curvature, 0.0)
    delta = np.clip(delta, -0.5, 0.5)
    best = y1 - 0.25 * (y0 - y2) * delta
    return best, ((2 * np.pi * (peak + delta) / n) % (2 * np.pi)).astype(np.float32)


def _newton(spectra: NDArray[np.complex64], angle: NDArray[np.floating], n_angles: int,
            steps: int = 2) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """Newton steps on ``f(α) = Re Σ_k h_k e^{-ikα}`` from ``angle`` (moves bounded by one
    grid step); returns ``f`` at the refined angle and the angle in ``[0, 2π)``."""
    k = np.arange(spectra.shape[-1])
    alpha = angle.astype(np.float64)
    for _ in range(steps):
        terms = spectra * np.exp(-1j * k * alpha[..., None])
        slope = (terms * (-1j * k)).real.sum(axis=-1)
        curvature = -(terms.real * k**2).sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(curvature < 0, slope / curvature, 0.0)
        alpha = alpha - np.clip(step, -2 * np.pi / n_angles, 2 * np.pi / n_angles)
    value = (spectra * np.exp(-1j * k * alpha[..., None])).real.sum(axis=-1)
    return value, (alpha % (2 * np.pi)).astype(np.float32)


@njit(parallel=True, cache=True, fastmath=True)
def _cross_spectra(queries, table, candidates, mirrored, ells, weight, out):  # pragma: no cover
    """``out[r, c, k] = Σ_{t: ells[t] = k} weight[t] conj(q[r, t]) z'[t]`` with ``z'`` the
    candidate's row of ``table``, conjugated when mirrored."""
    for r in prange(candidates.shape[0]):
        for c in range(candidates.shape[1]):
            row = table[candidates[r, c]]
            flip = mirrored[r, c]
            for t in range(row.shape[0]):
                v = np.conj(row[t]) if flip else row[t]
                out[r, c, ells[t]] += weight[t] * np.conj(queries[r, t]) * v
