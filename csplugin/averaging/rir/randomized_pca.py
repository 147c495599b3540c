r"""Streaming randomized PCA of complex features, consistent with mirroring.

The features ``b ∈ C^T`` of an image and of its mirror image are complex conjugates
(:mod:`csplugin.averaging.rir.bispectrum`). A *real* projection ``U`` (``T × d``) keeps that:
``U^T conj(b) = conj(U^T b)``, so a mirrored image is found by conjugating the reduced
features. The ``U`` that keeps most variance is the top eigenvectors of

.. math::

    G = \frac1n \sum_i \bigl[(\operatorname{Re} b_i - m)(\operatorname{Re} b_i - m)^T
        + \operatorname{Im} b_i \operatorname{Im} b_i^T\bigr],
    \qquad m = \frac1n \sum_i \operatorname{Re} b_i,

the covariance of the features together with their mirrors. ``G`` is never formed: it is
applied to ``T × l`` blocks in one streaming pass over the features, and its range is found
by randomized subspace iteration (Halko, Martinsson & Tropp, SIAM Review 2011, Alg. 4.4):
``Y = G Ω``, then ``n_iter`` times ``Q = qr(Y); Y = G Q``, and an ``l × l`` eigenproblem.
Memory: ``O(T l)`` plus one feature block; passes over the features: ``n_iter + 2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Feature blocks, re-iterable: each call yields ``(b, T)`` complex rows, all rows in total.
Blocks = Callable[[], Iterable[NDArray[np.complexfloating]]]


@dataclass(frozen=True, eq=False)
class ReflectionPCA:
    """A fitted projection (see the module docstring).

    Attributes
    ----------
    mean
        ``(T,)`` float64 mean of the real parts.
    components
        ``(T, d)`` float32 orthonormal columns, strongest first.
    variances
        ``(d,)`` variance captured by each column (eigenvalues of ``G``).
    """

    mean: NDArray[np.float64]
    components: NDArray[np.float32]
    variances: NDArray[np.float64]

    @classmethod
    def fit(cls, blocks: Blocks, n_features: int, n_components: int,
            rng: np.random.Generator, *, n_iter: int = 2, oversample: int = 10
            ) -> ReflectionPCA:
        """Randomized PCA of the features in ``blocks``.

        Parameters
        ----------
        blocks
            Re-iterable feature blocks (``n_iter + 2`` passes).
        n_features
            ``T``, the width of every block.
        n_components
            ``d``; at most the number of features ``T``.
        rng
            Source of the random test matrix.
        n_iter
            Subspace (power) iterations; more is more accurate for slowly decaying spectra.
        oversample
            Extra test vectors beyond ``d``.
        """
        if not 1 <= n_components <= n_features:
            raise ValueError(f"need 1 ≤ components ≤ {n_features} features, got {n_components}")
        width = min(n_components + oversample, n_features)
        test = rng.standard_normal((n_features, width)).astype(np.float32)
        product, mean, count = _apply(blocks, test, None)
        for _ in range(n_iter + 1):
            basis, _ = np.linalg.qr(product)
            product, _, _ = _apply(blocks, basis.astype(np.float32), (mean, count))
        small = basis.T @ product
        values, vectors = np.linalg.eigh((small + small.T) / 2)
        order = np.argsort(values)[::-1][:n_components]
        components = (basis @ vectors[:, order]).astype(np.float32)
        return cls(mean, components, np.maximum(values[order], 0.0))

    def transform(self, features: NDArray[np.complexfloating]) -> NDArray[np.complex64]:
        """``(b, T)`` features -> ``(b, d)`` complex64 ``(b - m) U``."""
        real = (features.real - self.mean).astype(np.float32) @ self.components
        imag = np.ascontiguousarray(features.imag, np.float32) @ self.components
        return (real + 1j * imag).astype(np.complex64)


def _apply(blocks: Blocks, matrix: NDArray[np.float32],
           known: tuple[NDArray[np.float64], int] | None
           ) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """``G @ matrix`` in one pass; the mean is computed on the way when not ``known``."""
    total = np.zeros(matrix.shape, np.float64)
    sums = np.zeros(matrix.shape[0]) if known is None else None
    count = 0
    for block in blocks():
        real = np.ascontiguousarray(block.real, np.float32)
        imag = np.ascontiguousarray(block.imag, np.float32)
        total += real.T @ (real @ matrix) + imag.T @ (imag @ matrix)
        if sums is not None:
            sums += real.sum(axis=0, dtype=np.float64)
        count += len(block)
    mean, count = (sums / count, count) if known is None else known
    return total / count - np.outer(mean, mean @ matrix), mean, count
