"""Disjoint 2D classes with in-plane angles, from a neighbour network.

A neighbour network gives every particle its own class; writing classes back to a
cryoSPARC/RELION file needs a partition and an angle per particle. :func:`network_means`
denoises every particle by averaging it with its network neighbours, each rotated (and
mirrored) into the particle's frame; :func:`aligned_kmeans` partitions those means by a
reference-free 2D classification in the whitened steerable coordinates:

seeding
    k-means++ with the aligned Euclidean distance ``min_α |z_i - R_α t|²`` (each next
    template a particle drawn with probability proportional to its squared distance to
    the nearest template so far).
iterations
    Templates are the class means of the members rotated into the class frame; every
    particle moves to the template it matches best over in-plane rotations (all
    templates, or the ``candidates`` nearest to its current one), until no label changes.

Like cryoSPARC and RELION 2D classes, the classes hold no mirrored members (a view and
its mirror image go to different classes). Cost: ``O(n K)`` alignments for seeding and per
iteration (``O(n · candidates)`` when ``K`` is larger), times ``n_init`` restarts, each
``O(m + n_angles log n_angles)``; memory ``O(n m + K m)``. Particles must be centred: the
coordinates are rotation-steerable, not shift-invariant.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from csplugin.averaging.rir.alignment import LikelihoodMatcher


def network_means(coordinates: NDArray[np.complexfloating], ells: NDArray[np.integer],
                  indices: NDArray[np.integer], mirrored: NDArray[np.bool_],
                  rotations: NDArray[np.floating]) -> NDArray[np.complex64]:
    """Each particle averaged with its neighbours, all in the particle's frame.

    Parameters
    ----------
    coordinates
        ``(n, m)`` steerable coordinates (columns with frequencies ``ells``).
    indices, mirrored, rotations
        ``(n, w)`` neighbour network (column 0 the particle itself), e.g.
        ``RIRClass2D.class_indices``, ``class_refl``, ``class_rotations``.

    Returns
    -------
    ndarray
        ``(n, m)`` complex64 means.
    """
    z = np.asarray(coordinates, np.complex64)
    ells = np.asarray(ells)
    out = np.zeros(z.shape, np.complex64)
    for col in range(indices.shape[1]):  # one column at a time: O(n m) memory
        member = z[indices[:, col]]
        member = np.where(mirrored[:, col, None], np.conj(member), member)
        out += member * np.exp(-1j * np.outer(rotations[:, col], ells)).astype(np.complex64)
    return out / indices.shape[1]


def aligned_kmeans(coordinates: NDArray[np.complexfloating], ells: NDArray[np.integer], k: int,
                   rng: np.random.Generator, max_iter: int = 20, candidates: int = 32,
                   n_init: int = 3) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Reference-free 2D classification of steerable coordinates (module docstring): the
    best (smallest sum of squared aligned distances) of ``n_init`` seeded runs.

    Parameters
    ----------
    coordinates
        ``(n, m)`` whitened steerable coordinates.
    ells
        ``(m,)`` their angular frequencies (ascending).
    k
        Number of classes, ``1 ≤ k ≤ n``.
    rng
        Random source of the seeding.
    max_iter
        Re-assignments at most.
    candidates
        Templates tried per particle when ``k`` is larger.
    n_init
        Independent seedings; k-means++ can start two templates in one class, which Lloyd
        iterations cannot undo.

    Returns
    -------
    labels, angles
        ``(n,)`` class (0 = largest; every class non-empty) and ``(n,)`` radians ``θ`` in
        ``[0, 2π)``: ``align_images(image, θ)`` (shift 0) puts the particle in its class
        frame (csplugin's internal ``angle``).
    """
    z = np.ascontiguousarray(coordinates, np.complex64)
    ells = np.asarray(ells, np.int64)
    n = len(z)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 ≤ classes ≤ {n} particles, got {k}")
    if n_init < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}")
    best: tuple[float, NDArray[np.int64], NDArray[np.float64]] | None = None
    for _ in range(n_init):
        labels, angles, cost = _aligned_kmeans_once(z, ells, k, rng, max_iter, candidates)
        if best is None or cost < best[0]:
            best = (cost, labels, angles)
    assert best is not None
    return best[1], best[2]


def _aligned_kmeans_once(z: NDArray[np.complex64], ells: NDArray[np.int64], k: int,
                         rng: np.random.Generator, max_iter: int, candidates: int
                         ) -> tuple[NDArray[np.int64], NDArray[np.float64], float]:
    """One seeded run of :func:`aligned_kmeans`; also returns its cost."""
    n = len(z)
    matcher = LikelihoodMatcher(ells, None)
    one = np.zeros((n, 1), np.int64)
    no_mirror = np.zeros((n, 1), bool)
    templates = np.empty((k, z.shape[1]), np.complex64)
    templates[0] = z[rng.integers(n)]
    nearest, alpha = matcher.compare(z, templates[:1], one, no_mirror)
    nearest, labels, angles = nearest[:, 0] ** 2, np.zeros(n, np.int64), -alpha[:, 0]
    for c in range(1, k):  # k-means++ seeding in the aligned distance
        total = float(nearest.sum())
        pick = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        templates[c] = z[pick]
        d, alpha = matcher.compare(z, templates[c:c + 1], one, no_mirror)
        closer = d[:, 0] ** 2 < nearest
        nearest[closer], labels[closer], angles[closer] = \
            d[closer, 0] ** 2, c, -alpha[closer, 0]
    cost = float(nearest.sum())
    for _ in range(max_iter):
        templates = _templates(z, ells, labels, angles, k)
        tried = _tried(templates, labels, matcher, candidates)
        distance, alpha = matcher.compare(z, templates, tried, np.zeros(tried.shape, bool))
        best = distance.argmin(axis=1)
        rows = np.arange(n)
        new = tried[rows, best]
        new_angles = -alpha[rows, best].astype(np.float64)  # alpha turns template onto particle
        empty = np.setdiff1d(np.arange(k), new)
        if len(empty):  # re-seed empty classes with the worst-fitted particles
            worst = np.argsort(-distance[rows, best])[: len(empty)]
            new[worst], new_angles[worst] = empty, 0.0
        changed = not np.array_equal(new, labels)
        labels, angles = new, new_angles
        cost = float(np.sum(distance[rows, best] ** 2))
        if not changed:
            break
    order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    rename = np.empty(k, np.int64)
    rename[order] = np.arange(k)
    return rename[labels], np.asarray(angles, np.float64) % (2 * np.pi), cost


def _templates(z: NDArray[np.complex64], ells: NDArray[np.int64], labels: NDArray[np.int64],
               angles: NDArray[np.floating], k: int) -> NDArray[np.complex64]:
    """``(K, m)`` class means of the members rotated by their angles into the class frame."""
    aligned = z * np.exp(-1j * np.outer(angles, ells)).astype(np.complex64)
    sums = np.zeros((k, z.shape[1]), np.complex128)
    np.add.at(sums, labels, aligned)
    return (sums / np.maximum(np.bincount(labels, minlength=k), 1)[:, None]).astype(np.complex64)


def _tried(templates: NDArray[np.complex64], labels: NDArray[np.int64],
           matcher: LikelihoodMatcher, candidates: int) -> NDArray[np.int64]:
    """``(n, C)`` templates each particle is compared with: all, or the ``candidates``
    nearest (aligned distance) to its current template, itself included."""
    k = len(templates)
    if k <= candidates:
        return np.broadcast_to(np.arange(k), (len(labels), k)).copy()
    everything = np.broadcast_to(np.arange(k), (k, k)).copy()
    d, _ = matcher.compare(templates, templates, everything, np.zeros((k, k), bool))
    near = np.argpartition(d, candidates - 1, axis=1)[:, :candidates]
    return near[labels]
