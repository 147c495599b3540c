r"""Rotation-invariant bispectrum features of steerable coordinates.

For steerable coordinates ``z_c`` of angular frequencies ``k_c``
(:mod:`csplugin.averaging.rir.steerable_pca`), rotating the image multiplies ``z_c`` by
``e^{-i k_c α}``, so every triple product

.. math::

    B_t = z_a\, z_b\, \overline{z_c}, \qquad k_a + k_b = k_c,

is unchanged; mirroring the image conjugates it (Zhao & Singer, "Rotationally invariant
image representation for viewing direction classification in cryo-EM", JSB 2014).

Triplet selection (bounded)
    All triplets with ``1 ≤ k_a ≤ k_b``, ``k_c = k_a + k_b`` (and ``a ≤ b`` when
    ``k_a = k_b``) are scored by the product of the three components' signal variances
    ``s_a s_b s_c`` (the expected signal power of the product), and the ``max_triplets``
    best are kept, deterministically. Zero-frequency components enter only when no
    triplet of positive frequencies exists (e.g. a rotationally symmetric object).
Compression
    ``B / |B|^{2/3}`` keeps the phase and makes the feature homogeneous of degree one in
    the image (a scaled image gives scaled features, as pixel distances do); raw triple
    products let a few strong components dominate every distance.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


def select_triplets(ells: NDArray[np.integer], signal: NDArray[np.floating],
                    max_triplets: int) -> NDArray[np.int64]:
    """The ``max_triplets`` strongest invariant triplets (see the module docstring).

    Parameters
    ----------
    ells
        ``(m,)`` angular frequency of each component.
    signal
        ``(m,)`` signal variance of each component (> 0).
    max_triplets
        Upper bound on the number of triplets (≥ 1).

    Returns
    -------
    ndarray
        ``(T, 3)`` int64 component indices ``(a, b, c)``, ``T ≤ max_triplets``, strongest
        first; empty ``(0, 3)`` when the components admit no triplet.
    """
    if max_triplets < 1:
        raise ValueError(f"bispectrum_triplets must be at least 1, got {max_triplets}")
    ells = np.asarray(ells)
    signal = np.asarray(signal, np.float64)
    for first_k in (1, 0):
        triplets, scores = _candidates(ells, signal, first_k)
        if len(triplets):
            break
    if len(triplets) > max_triplets:
        keep = np.argpartition(-scores, max_triplets - 1)[:max_triplets]
        triplets, scores = triplets[keep], scores[keep]
    order = np.lexsort((triplets[:, 2], triplets[:, 1], triplets[:, 0], -scores))
    return triplets[order]


def _candidates(ells: NDArray[np.integer], signal: NDArray[np.float64], first_k: int
                ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Every triplet with ``first_k ≤ k_a ≤ k_b`` and its score."""
    k_max = int(ells.max()) if len(ells) else -1
    groups = [np.flatnonzero(ells == k) for k in range(k_max + 1)]
    found, scores = [], []
    for ka in range(first_k, k_max + 1):
        for kb in range(ka, k_max - ka + 1):
            ga, gb, gc = groups[ka], groups[kb], groups[ka + kb]
            if not (len(ga) and len(gb) and len(gc)):
                continue
            a, b, c = (x.ravel() for x in np.meshgrid(ga, gb, gc, indexing="ij"))
            if ka == kb:
                keep = a <= b
                a, b, c = a[keep], b[keep], c[keep]
            found.append(np.stack([a, b, c], axis=1))
            scores.append(signal[a] * signal[b] * signal[c])
    if not found:
        return np.zeros((0, 3), np.int64), np.zeros(0)
    return np.concatenate(found).astype(np.int64), np.concatenate(scores)


def bispectrum(z: NDArray[np.complexfloating], triplets: NDArray[np.integer]
               ) -> NDArray[np.complex64]:
    """Compressed bispectrum features ``B / |B|^{2/3}`` of steerable coordinates.

    Parameters
    ----------
    z
        ``(b, m)`` steerable coordinates (one row per image).
    triplets
        ``(T, 3)`` component indices from :func:`select_triplets`.

    Returns
    -------
    ndarray
        ``(b, T)`` complex64; the features of a mirrored image are the conjugates.
    """
    z = np.ascontiguousarray(z, np.complex64)
    out = np.empty((len(z), len(triplets)), np.complex64)
    _bispectrum(z, np.ascontiguousarray(triplets, np.int64), out)
    return out


@njit(parallel=True, cache=True, fastmath=True)
def _bispectrum(z, triplets, out):  # pragma: no cover - compiled
    for i in prange(z.shape[0]):
        for t in range(triplets.shape[0]):
            v = z[i, triplets[t, 0]] * z[i, triplets[t, 1]] * np.conj(z[i, triplets[t, 2]])
            m = abs(v)
            out[i, t] = v / m ** (2.0 / 3.0) if m > 0 else 0
