"""Exact k-nearest neighbours among particles and their mirror images, in bounded blocks.

Columns ``0 .. n-1`` are the particles and ``n .. 2n-1`` their mirror images. For a block of
query rows a score matrix ``(b, 2n)`` is computed (at most :data:`BLOCK_BYTES`), and a
compiled per-row selection keeps the ``k`` smallest, never a particle itself or its own
mirror, and every other particle once (as itself or mirrored, whichever is nearer).
Memory stays ``O(b n)`` however many particles there are; no ``n × n`` matrix is formed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

#: Bytes of one block of float32 scores.
BLOCK_BYTES = 64 << 20

#: ``scores(rows) -> (len(rows), 2n)`` float32, smaller = nearer.
Scores = Callable[[NDArray[np.int64]], NDArray[np.float32]]


def smallest_with_mirrors(scores: Scores, n: int, k: int
                          ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.float32]]:
    """The ``k`` smallest scores of every particle over the others and their mirrors.

    Parameters
    ----------
    scores
        Score rows for a block of particles (see :data:`Scores`).
    n
        Number of particles.
    k
        Neighbours per particle, ``1 ≤ k ≤ n - 1``.

    Returns
    -------
    indices, mirrored, values
        ``(n, k)``: neighbour particle, whether its mirror image is meant, and the score;
        ascending in score. Every particle appears at most once (as itself or mirrored,
        whichever scores better).
    """
    if not 1 <= k <= n - 1:
        raise ValueError(f"need 1 ≤ k ≤ {n - 1} neighbours among {n} particles, got {k}")
    block = int(max(1, min(n, BLOCK_BYTES // (8 * n))))
    columns = np.empty((n, k), np.int64)
    values = np.empty((n, k), np.float32)
    for first in range(0, n, block):
        stop = min(first + block, n)
        block_scores = np.ascontiguousarray(scores(np.arange(first, stop)), np.float32)
        _select(block_scores, k, first, n, columns[first:stop], values[first:stop])
    return columns % n, columns >= n, values


def feature_neighbors(features: NDArray[np.complexfloating], k: int, normalize: bool = True
                      ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.float32]]:
    """Euclidean nearest neighbours of complex features whose mirror is the conjugate.

    Parameters
    ----------
    features
        ``(n, d)`` complex features (e.g. :meth:`ReflectionPCA.transform`).
    k
        Neighbours per particle (self and own mirror excluded).
    normalize
        Compare unit-norm features (cosine distance), as the features' overall scale
        follows the particle's contrast rather than its view.

    Returns
    -------
    indices, mirrored, distances
        ``(n, k)`` as :func:`smallest_with_mirrors`; distances are Euclidean.
    """
    x = np.concatenate([features.real, features.imag], axis=1).astype(np.float32)
    if normalize:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    d = features.shape[1]
    mirrored = x.copy()
    mirrored[:, d:] *= -1
    columns = np.ascontiguousarray(np.concatenate([x, mirrored]).T)  # (2d, 2n)
    norms = np.einsum("ij,ij->i", x, x)
    both = np.concatenate([norms, norms])

    def scores(rows: NDArray[np.int64]) -> NDArray[np.float32]:
        out = x[rows] @ columns
        out *= -2
        out += norms[rows, None]
        out += both
        return out

    indices, mirror, values = smallest_with_mirrors(scores, len(x), k)
    return indices, mirror, np.sqrt(np.maximum(values, 0))


@njit(parallel=True, cache=True)
def _select(scores, k, first, n, out_columns, out_values):  # pragma: no cover - compiled
    """Per row ``r`` (particle ``first + r``): the ``k`` smallest scores, ascending, skipping
    the particle's own two columns and keeping each other particle once (its better column).
    Sorted insertion: after the first few hundred columns almost every score is rejected by
    one comparison."""
    for r in prange(scores.shape[0]):
        own = first + r
        best = np.full(k, np.inf, np.float32)
        where = np.full(k, -1, np.int64)
        for c in range(scores.shape[1]):
            v = scores[r, c]
            if not v < best[k - 1] or c == own or c == own + n:  # NaN never enters
                continue
            end = k - 1  # the slot given up: the worst, or the particle's other column
            listed = False
            for j in range(k):
                if where[j] >= 0 and where[j] % n == c % n:
                    end, listed = j, True
                    break
            if listed and best[end] <= v:
                continue
            j = end
            while j > 0 and best[j - 1] > v:
                best[j] = best[j - 1]
                where[j] = where[j - 1]
                j -= 1
            best[j] = v
            where[j] = c
        out_columns[r] = where
        out_values[r] = best
