r"""Vector diffusion maps over the neighbour graph, with mirror images.

At low SNR a particle's nearest neighbours are partly wrong, but right ones agree with each
other: the in-plane rotations found between neighbours compose consistently around cycles
of the graph, wrong links do not. Vector diffusion maps (Singer & Wu, Comm. Pure Appl. Math.
2012; used for class averaging by Zhao & Singer, JSB 2014) turn that consistency into an
affinity.

Graph
    Node ``i`` is particle ``i``, node ``n + i`` its mirror image. A link "candidate ``j``
    (mirrored or not) rotated by ``α`` matches ``i``" gives the connection ``e^{-iα}``
    between ``i`` and ``j`` (or ``n + j``), and the mirror link ``e^{+iα}`` between
    ``n + i`` and ``n + j`` (or ``j``): the same statement about the mirror images. The
    matrix ``S`` (``2n × 2n``, Hermitian, unit weights, links found from both ends counted
    twice) is normalised as ``D^{-1/2} S D^{-1/2}``, ``D`` the degrees.
Embedding
    The ``m`` leading eigenvectors ``u_l`` (eigenvalues ``λ_l``) give every node the vector
    ``φ_i = (λ_l u_l(i))_l``, normalised; the affinity of two nodes is ``|<φ_i, φ_j>|²`` in
    ``[0, 1]`` (1 for nodes whose neighbourhoods agree up to one rotation) and their distance
    ``sqrt(2 - 2 affinity)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sparse
from numpy.typing import NDArray
from scipy.sparse.linalg import eigsh

from csplugin.averaging.rir.neighbors import smallest_with_mirrors


def diffusion_embedding(indices: NDArray[np.integer], mirrored: NDArray[np.bool_],
                        angles: NDArray[np.floating], n_vectors: int,
                        rng: np.random.Generator) -> tuple[NDArray[np.complex128],
                                                           NDArray[np.float64]]:
    """Normalised vector-diffusion embedding of the particles and their mirror images.

    Parameters
    ----------
    indices, mirrored, angles
        ``(n, g)`` links of each particle: neighbour, mirror flag, aligning angle ``α``
        (radians; see :mod:`csplugin.averaging.rir.alignment`).
    n_vectors
        Eigenvectors ``m`` kept, ``1 ≤ m < 2n``.
    rng
        Seeds the eigensolver's start vector (results are reproducible).

    Returns
    -------
    embedding, eigenvalues
        ``(2n, m)`` unit rows (node ``n + i`` is particle ``i`` mirrored) and ``(m,)``.
    """
    n, g = indices.shape
    if not 1 <= n_vectors < 2 * n:
        raise ValueError(f"diffusion_vectors must lie in [1, {2 * n - 1}], got {n_vectors}")
    source = np.repeat(np.arange(n), g)
    target = indices.ravel() + n * mirrored.ravel()
    mirror_target = indices.ravel() + n * ~mirrored.ravel()
    link = np.exp(-1j * angles.ravel().astype(np.float64))
    matrix = sparse.coo_matrix(
        (np.concatenate([link, link.conj()]),
         (np.concatenate([source, source + n]), np.concatenate([target, mirror_target]))),
        shape=(2 * n, 2 * n)).tocsr()
    matrix = matrix + matrix.conj().T
    degree = np.asarray(abs(matrix).sum(axis=1)).ravel()
    scale = sparse.diags(1 / np.sqrt(np.maximum(degree, 1e-12)))
    matrix = (scale @ matrix @ scale).tocsr()
    if 2 * n <= max(200, 4 * n_vectors):  # small graphs: dense and exact
        values, vectors = np.linalg.eigh(matrix.toarray())
        values, vectors = values[-n_vectors:], vectors[:, -n_vectors:]
    else:
        start = rng.standard_normal(2 * n) + 1j * rng.standard_normal(2 * n)
        values, vectors = eigsh(matrix, k=n_vectors, which="LA", v0=start)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    embedding = vectors * values
    embedding /= np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-300)
    return embedding, values


def diffusion_neighbors(embedding: NDArray[np.complexfloating], k: int
                        ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.float32]]:
    """Each particle's ``k`` nearest nodes by diffusion distance (own two nodes excluded).

    Parameters
    ----------
    embedding
        ``(2n, m)`` from :func:`diffusion_embedding`.
    k
        Neighbours per particle.

    Returns
    -------
    indices, mirrored, distances
        ``(n, k)``, ascending ``sqrt(2 - 2 affinity)``.
    """
    n = len(embedding) // 2
    phi = np.ascontiguousarray(embedding, np.complex64)
    columns = np.ascontiguousarray(phi.conj().T)

    def scores(rows: NDArray[np.int64]) -> NDArray[np.float32]:
        return -np.abs(phi[rows] @ columns) ** 2

    indices, mirror, values = smallest_with_mirrors(scores, n, k)
    return indices, mirror, np.sqrt(np.maximum(2 + 2 * values, 0)).astype(np.float32)
