r"""``RIRClass2D``: rotation-invariant neighbour networks for particles never classified.

Every particle gets a class: itself (column 0) and its ``n_nbor - 1`` nearest neighbours
among the other particles and their mirror images, with a mirror flag, a distance and the
in-plane rotation that aligns the neighbour to it. The stages (each in its own module):

1. **Steerable PCA** (:mod:`~csplugin.averaging.rir.fb_basis`,
   :mod:`~csplugin.averaging.rir.steerable_pca`): images (background = mean outside the disc
   removed) are expanded in a Fourier–Bessel basis on the disc of radius ``radius`` up to
   ``max_frequency``; the noise variance comes from the pixels outside the disc; per
   angular frequency, the components above the Marchenko–Pastur noise edge are kept (at
   most ``fspca_components``) as whitened coordinates.
2. **Bispectrum** (:mod:`~csplugin.averaging.rir.bispectrum`): the ``bispectrum_triplets``
   strongest rotation-invariant triple products of the Wiener-filtered coordinates,
   magnitude-compressed.
3. **Randomized PCA** (:mod:`~csplugin.averaging.rir.randomized_pca`) of those features to
   ``bispectrum_components``, with a real projection so that a mirror image is the complex
   conjugate.
4. **Candidates** (:mod:`~csplugin.averaging.rir.neighbors`): the ``n_candidates`` nearest
   other particles of each particle in that space, each as itself or mirrored, whichever
   is nearer (cosine distance; exact, blockwise).
5. **Alignment** (:mod:`~csplugin.averaging.rir.alignment`): each candidate is rotationally
   aligned to the particle in the steerable coordinates and scored by a Gaussian
   likelihood distance. Without diffusion the best ``n_nbor - 1`` are the class.
6. **Diffusion** (:mod:`~csplugin.averaging.rir.diffusion`, default): the ``graph_degree`` best
   links of every particle form a graph with rotations; vector diffusion maps
   (``diffusion_vectors`` eigenvectors) rank all particles and mirror images by how
   consistently their neighbourhoods agree, and the class is the ``n_nbor - 1`` nearest
   in that affinity; their rotations are aligned as in 5.

Memory and time are bounded for large sets: images are streamed twice (their expansion is
kept between the passes only within ``cache_bytes``), features are recomputed per block
beyond ``cache_bytes``, and every neighbour search works on blocks of at most 64 MiB,
never an ``n × n`` matrix. Stage 4 and the diffusion search cost ``O(n²)`` arithmetic.

Differences from ASPIRE's ``RIRClass2D`` (same idea, own implementation): the noise is
whitened with the expansion's exact noise covariance and components are chosen by the
Marchenko–Pastur edge (not a fixed count); ``bispectrum_components`` and the triplet count
are honoured (ASPIRE's legacy path fixes 300); triplets are the strongest ones, not a
random sample; neighbours are re-ranked by rotational alignment and vector diffusion
(ASPIRE stops at stage 4); rotations are returned.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from csplugin.averaging.classes import ClassTable
from csplugin.averaging.classifiers import Class2D
from csplugin.averaging.rir.alignment import LikelihoodMatcher
from csplugin.averaging.rir.bispectrum import bispectrum, select_triplets
from csplugin.averaging.rir.diffusion import diffusion_embedding, diffusion_neighbors
from csplugin.averaging.rir.fb_basis import NYQUIST, FBBasis, fb_basis
from csplugin.averaging.rir.neighbors import feature_neighbors
from csplugin.averaging.rir.randomized_pca import ReflectionPCA
from csplugin.averaging.rir.steerable_pca import MomentAccumulator, NoiseEstimator, SteerablePCA
from csplugin.core.images import chunk_size_for, iter_chunks
from csplugin.core.particles import ParticleTable

__all__ = ["RIRClass2D"]

#: Images (or feature rows) handled at a time when the source is an array.
_ROWS = 1024
#: Smallest noise variance used, relative to the mean power per coefficient (noise-free data).
NOISE_FLOOR = 1e-6


class RIRClass2D(Class2D):
    """Rotation-invariant classification into neighbour networks (see the module docstring).

    Parameters
    ----------
    src
        The particles: a :class:`~csplugin.core.particles.ParticleTable` (images streamed with
        :func:`csplugin.core.images.iter_chunks`) or an ``(n, N, N)`` array.
    fspca_components
        Upper bound on the steerable PCA components kept above the noise (each a ``(k, v)``
        pair; at most the basis size).
    bispectrum_components
        Dimension of the invariant features after the randomized PCA (at most
        ``bispectrum_triplets``; fewer when the data give fewer triplets).
    n_nbor
        Class size including the particle itself, ``1 ≤ n_nbor ≤ n``.
    seed
        Seed of the randomized PCA and the eigensolver (the result is deterministic).
    bispectrum_triplets
        Upper bound on the invariant triplets (the strongest are used).
    n_candidates
        Candidates per particle from the invariant features, re-ranked by alignment
        (default ``min(100, n - 1)``).
    graph_degree
        Links per particle in the diffusion graph (``≤ n_candidates``; default 15).
    diffusion
        Rank the final neighbours by vector diffusion (True) or by the alignment
        distance of the candidates (False; then ``n_nbor - 1 ≤ n_candidates``).
    diffusion_vectors
        Eigenvectors of the diffusion embedding (default 10).
    radius
        Disc radius in pixels holding the particle (default ``N // 2``); the pixels
        outside it give the noise estimate.
    max_frequency
        Band limit of the Fourier–Bessel basis, cycles/pixel (≤ 0.5).
    noise_variance
        White noise variance per pixel; default: estimated outside the disc (at least
        ``NOISE_FLOOR`` times the mean power per coefficient, so noise-free images work).
    chunk_size
        Particles read at a time from a table (default
        :func:`csplugin.core.images.chunk_size_for`).
    cache_bytes
        Memory allowed for keeping the expansion between the two passes and the invariant
        features between the randomized-PCA passes.

    Attributes
    ----------
    class_indices, class_refl, class_distances, class_rotations
        After :meth:`classify`: ``(n, n_nbor)`` arrays. ``class_indices[i, 0] = i``;
        ``class_refl`` the mirror flag (:func:`csplugin.core.conventions.mirror_y` first);
        ``class_distances`` ascending (the diffusion distance ``sqrt(2 - 2 affinity)`` with
        diffusion, else the likelihood distance of :mod:`~csplugin.averaging.rir.alignment` in
        excess of that of an exact copy);
        ``class_rotations`` the angle ``α`` (radians) such that
        ``align_images(mirrored-if-flagged neighbour, α)`` matches the particle.
    spca
        The fitted :class:`~csplugin.averaging.rir.steerable_pca.SteerablePCA`.
    coordinates, features
        After :meth:`classify`: ``(n, m)`` whitened steerable coordinates and ``(n, d)``
        reduced invariant features (a mirror image has the conjugate features).
    summary
        Sizes and stage timings of the last run (JSON-serialisable).
    """

    def __init__(self, src: ParticleTable | NDArray[np.floating], fspca_components: int = 400,
                 bispectrum_components: int = 150, n_nbor: int = 50, seed: int | None = None,
                 *, bispectrum_triplets: int = 4000, n_candidates: int | None = None,
                 graph_degree: int | None = None, diffusion: bool = True,
                 diffusion_vectors: int | None = None,
                 radius: float | None = None, max_frequency: float = NYQUIST,
                 noise_variance: float | None = None, chunk_size: int | None = None,
                 cache_bytes: int = 1 << 30) -> None:
        if isinstance(src, ParticleTable):
            n, size = src.n, src.box() if src.n else 0
        else:
            src = np.asarray(src)
            if src.ndim != 3 or src.shape[1] != src.shape[2]:
                raise ValueError(f"images must be an (n, N, N) array, got shape {src.shape}")
            n, size = src.shape[0], src.shape[1]
        super().__init__(src)  # type: ignore[arg-type]
        if n < 3:
            raise ValueError(f"RIRClass2D needs at least 3 particles, got {n}")
        n_candidates = min(100, n - 1) if n_candidates is None else n_candidates
        graph_degree = min(15, n_candidates) if graph_degree is None else graph_degree
        diffusion_vectors = min(10, 2 * n - 1) if diffusion_vectors is None else diffusion_vectors
        self.basis: FBBasis = fb_basis(size, radius, max_frequency)
        _check_range("fspca_components", fspca_components, 1, self.basis.count,
                     f"the size of the Fourier-Bessel basis of {size}-pixel images (radius "
                     f"{self.basis.disc_radius:g}, max_frequency {max_frequency:g})")
        _check_range("bispectrum_triplets", bispectrum_triplets, 1, None)
        _check_range("bispectrum_components", bispectrum_components, 1, bispectrum_triplets,
                     "bispectrum_triplets")
        _check_range("n_nbor", n_nbor, 1, n, "the number of particles")
        _check_range("n_candidates", n_candidates, 1, n - 1, "the number of other particles")
        if diffusion:
            _check_range("graph_degree", graph_degree, 1, n_candidates, "n_candidates")
            _check_range("diffusion_vectors", diffusion_vectors, 1, 2 * n - 1,
                         "twice the number of particles minus one")
        else:
            _check_range("n_nbor", n_nbor, 1, n_candidates + 1, "n_candidates + 1 without "
                         "diffusion (the class is the best candidates)")
        if noise_variance is not None and not noise_variance > 0:
            raise ValueError(f"noise_variance must be positive, got {noise_variance}")
        if chunk_size is not None:
            _check_range("chunk_size", chunk_size, 1, None)
        self.n = n
        self.fspca_components = int(fspca_components)
        self.bispectrum_components = int(bispectrum_components)
        self.bispectrum_triplets = int(bispectrum_triplets)
        self.n_nbor = int(n_nbor)
        self.n_candidates = int(n_candidates)
        self.graph_degree = int(graph_degree)
        self.diffusion = bool(diffusion)
        self.diffusion_vectors = int(diffusion_vectors)
        self.noise_variance = noise_variance
        self.chunk_size = chunk_size
        self.cache_bytes = int(cache_bytes)
        self.seed = seed
        self.spca: SteerablePCA | None = None
        self.summary: dict[str, Any] = {}
        self.class_indices: NDArray[np.int64] | None = None
        self.class_refl: NDArray[np.bool_] | None = None
        self.class_distances: NDArray[np.float64] | None = None
        self.class_rotations: NDArray[np.float64] | None = None
        self.coordinates: NDArray[np.complex64] | None = None
        self.features: NDArray[np.complex64] | None = None

    # ------------------------------------------------------------------------------ stages
    def classify(self) -> ClassTable:
        """Compute the neighbour network.

        Returns
        -------
        ClassTable
            ``anchored`` rows, one per particle, ``n_nbor`` members each (unpacks as
            ``class_indices, class_refl, class_distances``; :attr:`class_indices` etc. hold
            the same as ``(n, n_nbor)`` arrays).
        """
        rng = np.random.default_rng(self.seed)
        clock = _Clock()
        z = self.coordinates = self.steerable_coordinates()
        clock.lap("steerable_pca")
        features = self.features = self.invariant_features(z, rng)
        clock.lap("bispectrum_pca")
        candidates, cand_mirror, _ = feature_neighbors(features, self.n_candidates)
        clock.lap("candidates")
        matcher = self.matcher
        dist, angle = matcher.compare(z, z, candidates, cand_mirror, excess=True)
        order = np.argsort(dist, axis=1, kind="stable")
        candidates, cand_mirror, dist, angle = (np.take_along_axis(a, order, 1) for a in
                                                (candidates, cand_mirror, dist, angle))
        clock.lap("alignment")
        k = self.n_nbor - 1
        if self.diffusion:
            g = self.graph_degree
            embedding, eigenvalues = diffusion_embedding(
                candidates[:, :g], cand_mirror[:, :g], angle[:, :g], self.diffusion_vectors, rng)
            if k:
                idx, mirror, dist = diffusion_neighbors(embedding, k)
                _, angle = matcher.compare(z, z, idx, mirror)
            else:
                idx, mirror = candidates[:, :0], cand_mirror[:, :0]
                dist, angle = dist[:, :0], angle[:, :0]
            self.summary["diffusion_eigenvalues"] = eigenvalues.round(6).tolist()
            clock.lap("diffusion")
        else:
            idx, mirror, dist, angle = candidates[:, :k], cand_mirror[:, :k], dist[:, :k], \
                angle[:, :k]
        own = np.arange(self.n)[:, None]
        self.class_indices = np.concatenate([own, idx], axis=1).astype(np.int64)
        self.class_refl = np.concatenate([np.zeros_like(own, bool), mirror], axis=1)
        self.class_distances = np.concatenate([np.zeros(own.shape), dist], axis=1)
        self.class_rotations = np.concatenate([np.zeros(own.shape), angle], axis=1)
        self.summary["seconds"] = clock.laps
        return ClassTable.from_rows(self.class_indices, self.class_refl, self.class_distances,
                                    anchored=True)

    def steerable_coordinates(self) -> NDArray[np.complex64]:
        """Fit the steerable PCA (:attr:`spca`) and return the whitened coordinates.

        Returns
        -------
        ndarray
            ``(n, m)`` complex64, columns as ``spca.ells``.
        """
        noise = NoiseEstimator(self.basis.size, self.basis.disc_radius)
        moments = MomentAccumulator(self.basis)
        per_image = (self.basis.max_ell + 1) * self.basis.q_max * 8
        cache: list[NDArray[np.complex64]] | None = (
            [] if self.n * per_image <= self.cache_bytes else None)
        for _, images in self._image_chunks():
            coefs = self._expand(images, noise.background(images))
            moments.add(coefs)
            if cache is not None:
                cache.append(coefs)
        variance = self.noise_variance if self.noise_variance is not None else \
            max(noise.variance, NOISE_FLOOR * moments.mean_power)
        self.spca = SteerablePCA.fit(moments, variance, self.fspca_components, noise.pixels)
        z = np.empty((self.n, self.spca.count), np.complex64)
        if cache is not None:
            start = 0
            for coefs in cache:
                z[start:start + coefs.shape[-1]] = self.spca.transform(coefs)
                start += coefs.shape[-1]
        else:
            for rows, images in self._image_chunks():  # second pass over the images
                z[rows] = self.spca.transform(
                    self._expand(images, noise.background(images, accumulate=False)))
        self.summary.update(
            particles=self.n, box=self.basis.size, radius=self.basis.disc_radius,
            basis_functions=self.basis.count, noise_variance=float(variance),
            noise_estimated=self.noise_variance is None, spca_components=self.spca.count,
            spca_max_frequency=int(self.spca.ells.max()))
        return z

    def invariant_features(self, z: NDArray[np.complex64], rng: np.random.Generator
                           ) -> NDArray[np.complex64]:
        """Bispectrum features of steerable coordinates, reduced by the randomized PCA.

        Parameters
        ----------
        z
            ``(n, m)`` whitened coordinates (:meth:`steerable_coordinates`).
        rng
            Random source of the randomized PCA.

        Returns
        -------
        ndarray
            ``(n, d)`` complex64; the features of a mirror image are the conjugates.
        """
        assert self.spca is not None
        zw = z * self.spca.wiener().astype(np.float32)
        triplets = select_triplets(self.spca.ells, self.spca.signal, self.bispectrum_triplets)
        if len(triplets) == 0:
            raise ValueError(f"the {self.spca.count} steerable components admit no invariant "
                             "triplet; raise fspca_components or use more particles")
        width = len(triplets)
        step = max(1, min(self.n, (64 << 20) // (8 * width)))
        cached = self.n * width * 8 <= self.cache_bytes
        features = bispectrum(zw, triplets) if cached else None

        def blocks() -> Iterator[NDArray[np.complex64]]:
            for first in range(0, self.n, step):
                yield (features[first:first + step] if features is not None
                       else bispectrum(zw[first:first + step], triplets))

        d = min(self.bispectrum_components, width)
        pca = ReflectionPCA.fit(blocks, width, d, rng)
        out = np.empty((self.n, d), np.complex64)
        for first, block in zip(range(0, self.n, step), blocks()):
            out[first:first + len(block)] = pca.transform(block)
        self.summary.update(bispectrum_triplets=width, bispectrum_components=d)
        return out

    @property
    def matcher(self) -> LikelihoodMatcher:
        """Rotational alignment of the steerable coordinates (after the PCA is fitted)."""
        if self.spca is None:
            raise RuntimeError("the steerable PCA is not fitted yet: call classify()")
        return LikelihoodMatcher(self.spca.ells, self.spca.signal)

    # ------------------------------------------------------------------------------ images
    def _image_chunks(self) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float32]]]:
        """``(rows, images)`` over the source in order, ``images`` ``(k, N, N)``."""
        if isinstance(self.src, ParticleTable):
            size = self.chunk_size or chunk_size_for(self.basis.size)
            yield from iter_chunks(self.src, size, self.src.images.stacks)
        else:
            size = self.chunk_size or _ROWS
            for first in range(0, self.n, size):
                rows = np.arange(first, min(first + size, self.n))
                yield rows, np.asarray(self.src[first:rows[-1] + 1], np.float32)

    def _expand(self, images: NDArray[np.float32], background: NDArray[np.float32]
                ) -> NDArray[np.complex64]:
        """Grouped coefficients of images with their ``(b,)`` background removed."""
        return self.basis.expand_by_ell(images - background[:, None, None])


def _check_range(name: str, value: int, low: int, high: int | None, what: str = "") -> None:
    """ValueError unless ``value`` is an integer in ``[low, high]``."""
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f"≥ {low}"
        reason = f" ({high} is {what})" if high is not None and what else ""
        raise ValueError(f"{name}={value} must be {'in ' if high is not None else ''}"
                         f"{bound}{reason}")


class _Clock:
    """Stage timer: ``lap(name)`` records seconds since the previous lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now
