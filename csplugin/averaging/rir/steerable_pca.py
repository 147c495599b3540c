r"""Noise-aware steerable PCA of Fourier–Bessel coefficients.

With particles at uniformly random in-plane angles, the covariance of the Fourier–Bessel
coefficients (:mod:`csplugin.averaging.rir.fb_basis`) is block diagonal in the angular frequency
``k``: one small ``n_q(k) × n_q(k)`` block per ``k`` (Zhao, Shkolnisky & Singer, "Fast
steerable principal component analysis", IEEE TCI 2016). Each block is analysed against the
noise:

noise
    White pixel noise of variance ``σ²``, estimated from the pixels outside the disc (each
    image's own background mean removed), unless given. Its coefficient covariance is
    ``σ² G_k`` with ``G_k`` the exact Gram matrix of the expansion
    (:attr:`~csplugin.averaging.rir.fb_basis.FBBasis.noise_gram`).
    Subtracting each image's background (the mean of ``n_b`` noise pixels outside the
    disc) adds the noise of that mean to the constant image: ``σ²/n_b · c c^T`` at
    ``k = 0``, ``c`` the coefficients of the constant image, which is added.
components
    Generalised eigenvectors ``C_k v = μ N_k v`` (``C_k`` the sample covariance of the
    images together with their mirror images, i.e. the real part of the images' own; the
    mean image, rotationally symmetric, is removed from ``k = 0``; ``N_k`` the noise
    covariance, real by the grid's mirror symmetry). The vectors ``v`` are real, so mirroring
    still conjugates the coordinates.
    ``μ`` is the variance along ``v`` in units of the noise variance; a component is kept
    when ``μ`` exceeds the Marchenko–Pastur edge ``(1 + sqrt(γ_k))²``, ``γ_k = n_q(k) / n``,
    by three Tracy–Widom scales ``(1 + sqrt(γ)) (1 + 1/sqrt(γ))^{1/3} n^{-2/3}`` (Johnstone,
    Ann. Stat. 2001; pure noise stays below it), strongest first, at most
    ``max_components``.
coordinates
    ``z = v^T (a - mean)`` with ``v^T σ² G_k v = 1``: the noise in every coordinate has unit
    variance (whitened). The signal variance of a kept component is estimated without the
    sample-eigenvalue bias (spiked covariance model: ``μ = ℓ + γ ℓ / (ℓ - 1)``) as
    ``s = ℓ - 1``.

Coordinates are steerable like the coefficients: rotating an image by ``R(α)`` multiplies
``z`` of a frequency-``k`` component by ``e^{-ikα}``; mirroring ``y -> -y`` conjugates it.
A component is one ``(k, v)`` pair; for ``k > 0`` it is complex and stands for the ``±k``
pair of real dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import eigh

from csplugin.averaging.rir.fb_basis import FBBasis
from csplugin.core.conventions import disc_mask

#: Tracy–Widom scales a kept eigenvalue must exceed the Marchenko–Pastur edge by.
TRACY_WIDOM_MARGIN = 3.0


def outside_disc(size: int, radius: float) -> NDArray[np.bool_]:
    """``(N, N)`` bool: pixels at distance ``≥ radius`` from ``(N//2, N//2)``."""
    return ~disc_mask(size, radius)


class NoiseEstimator:
    """Streaming white-noise variance from the pixels outside the disc.

    Each image's background (the mean of its outside pixels) is its own; the variance is
    pooled over all images: ``σ² = Σ (x - background)² / Σ (n_outside - 1)``.

    Parameters
    ----------
    size, radius
        Image size ``N`` and disc radius (pixels).
    """

    def __init__(self, size: int, radius: float) -> None:
        self.mask = outside_disc(size, radius).ravel()
        #: Pixels each background mean is taken over.
        self.pixels = int(self.mask.sum())
        if self.mask.sum() < 2:
            raise ValueError(f"a {radius:g}-pixel disc leaves fewer than 2 pixels of a "
                             f"{size}-pixel image outside it: nothing to estimate noise from")
        self._squares = 0.0
        self._dof = 0

    def background(self, images: NDArray[np.floating], accumulate: bool = True
                   ) -> NDArray[np.float32]:
        """``(b,)`` mean of each image's outside pixels; with ``accumulate`` the images'
        noise is added to the estimate."""
        outside = images.reshape(len(images), -1)[:, self.mask].astype(np.float64)
        means = outside.mean(axis=1)
        if accumulate:
            self._squares += float(np.sum((outside - means[:, None]) ** 2))
            self._dof += outside.shape[0] * (outside.shape[1] - 1)
        return means.astype(np.float32)

    @property
    def variance(self) -> float:
        """The pooled noise variance ``σ²`` (pixel units²)."""
        if self._dof == 0:
            raise ValueError("no image seen yet")
        return self._squares / self._dof


class MomentAccumulator:
    """Streaming first (``k = 0``) and second moments of grouped coefficients.

    Parameters
    ----------
    basis
        The basis the coefficients are expanded in.
    """

    def __init__(self, basis: FBBasis) -> None:
        self.basis = basis
        self.second = np.zeros((basis.max_ell + 1, basis.q_max, basis.q_max), np.complex128)
        self.first = np.zeros(basis.q_max)
        self.count = 0

    @property
    def mean_power(self) -> float:
        """Mean squared coefficient, ``E|a|²`` over images and coefficients."""
        diagonal = np.einsum("kqq->kq", self.second).real  # padding rows are zero
        return float(diagonal.sum()) / max(self.count, 1) / self.basis.count

    def add(self, by_ell: NDArray[np.complex64]) -> None:
        """Add ``(max_ell + 1, q_max, b)`` coefficients (:meth:`FBBasis.expand_by_ell`)."""
        self.second += np.matmul(by_ell, by_ell.conj().transpose(0, 2, 1))
        self.first += by_ell[0].real.sum(axis=1)
        self.count += by_ell.shape[-1]


@dataclass(frozen=True, eq=False)
class SteerablePCA:
    """A fitted steerable PCA (see the module docstring); :meth:`transform` applies it.

    Attributes
    ----------
    basis
        The Fourier–Bessel basis.
    noise_variance
        ``σ²`` used for whitening.
    mean
        ``(q_max,)`` mean ``k = 0`` coefficients (the rotationally symmetric mean image).
    ells
        ``(m,)`` angular frequency of each component, ascending (strongest first within a
        frequency).
    eigenvalues
        ``(m,)`` ``μ``: sample variance along the component / noise variance.
    signal
        ``(m,)`` debiased signal variance ``s = ℓ - 1`` in units of the noise variance.
    projections
        ``(max_ell + 1,)`` tuple; entry ``k`` is ``(m_k, q_max)`` real: row ``j`` is
        ``v^T`` of the ``j``-th component of frequency ``k`` (zero-padded in ``q``).
    n_images
        Images the moments were estimated from.
    """

    basis: FBBasis
    noise_variance: float
    mean: NDArray[np.float64]
    ells: NDArray[np.int64]
    eigenvalues: NDArray[np.float64]
    signal: NDArray[np.float64]
    projections: tuple[NDArray[np.float64], ...]
    n_images: int

    @classmethod
    def fit(cls, moments: MomentAccumulator, noise_variance: float, max_components: int,
            background_pixels: int | None = None) -> SteerablePCA:
        """Components of accumulated moments above the noise.

        Parameters
        ----------
        moments
            Accumulated coefficients of ``n`` images.
        noise_variance
            White pixel-noise variance ``σ² > 0``.
        max_components
            Keep at most this many components (the strongest by ``s``).
        background_pixels
            ``n_b`` when each image had the mean of ``n_b`` of its noise pixels subtracted
            (:class:`NoiseEstimator`), None when nothing was subtracted.

        Raises
        ------
        ValueError
            Bad parameters, or no component rises above the noise.
        """
        basis, n = moments.basis, moments.count
        if not noise_variance > 0:
            raise ValueError(f"noise variance must be positive, got {noise_variance:g}; "
                             "give noise_variance explicitly for noise-free images")
        if not 1 <= max_components <= basis.count:
            raise ValueError(f"fspca_components={max_components} must lie in [1, "
                             f"{basis.count}], the size of the Fourier-Bessel basis "
                             f"({basis.size}-pixel images, radius {basis.disc_radius:g})")
        if n < 2:
            raise ValueError(f"steerable PCA needs at least 2 images, got {n}")
        mean = moments.first / n
        constant = basis.expand_by_ell(np.ones((1, basis.size, basis.size)))[0, :, 0].real
        starts = basis.ell_starts
        found: list[tuple[float, int, float, float, NDArray[np.float64]]] = []
        for k in range(basis.max_ell + 1):
            q = int(starts[k + 1] - starts[k])
            cov = (moments.second[k, :q, :q] / n).real  # with the mirror images: real
            if k == 0:
                cov = cov - np.outer(mean[:q], mean[:q])
            cov = (cov + cov.T) / 2
            noise = noise_variance * basis.noise_gram[k].real
            if k == 0:
                if background_pixels:
                    c = constant[:q]
                    noise = noise + noise_variance / background_pixels * np.outer(c, c)
            noise = noise + 1e-9 * np.trace(noise).real / q * np.eye(q)
            mu, vectors = eigh(cov, noise)
            gamma = q / n
            edge = (1 + np.sqrt(gamma)) ** 2 + TRACY_WIDOM_MARGIN * (1 + np.sqrt(gamma)) * (
                1 + 1 / np.sqrt(gamma)) ** (1 / 3) * n ** (-2 / 3)
            for j in np.flatnonzero(mu > edge):
                t = mu[j] + 1 - gamma
                ell = (t + np.sqrt(max(t * t - 4 * mu[j], 0.0))) / 2
                found.append((ell - 1, k, float(mu[j]), gamma, vectors[:, j]))
        if not found:
            raise ValueError(f"no steerable component of {n} images rises above the noise "
                             f"(σ² = {noise_variance:.4g}): too few or too noisy images, or a "
                             "wrong noise variance")
        found.sort(key=lambda c: -c[0])
        kept = sorted(found[:max_components], key=lambda c: (c[1], -c[0]))
        ells = np.array([c[1] for c in kept], np.int64)
        q_max = moments.second.shape[1]
        projections = []
        for k in range(basis.max_ell + 1):
            rows = [c[4] for c in kept if c[1] == k]
            p = np.zeros((len(rows), q_max))
            for j, v in enumerate(rows):
                p[j, : len(v)] = v
            projections.append(p)
        return cls(basis, float(noise_variance), mean, ells,
                   np.array([c[2] for c in kept]), np.array([c[0] for c in kept]),
                   tuple(projections), n)

    @property
    def count(self) -> int:
        """Number of components ``m``."""
        return len(self.ells)

    def transform(self, by_ell: NDArray[np.complex64]) -> NDArray[np.complex64]:
        """Whitened coordinates of grouped coefficients.

        Parameters
        ----------
        by_ell
            ``(max_ell + 1, q_max, b)`` coefficients (:meth:`FBBasis.expand_by_ell`), each
            image's background already removed.

        Returns
        -------
        ndarray
            ``(b, m)`` complex64 ``z`` (unit noise variance), columns as :attr:`ells`.
        """
        out = np.empty((by_ell.shape[-1], self.count), np.complex64)
        column = 0
        for k, p in enumerate(self.projections):
            if len(p) == 0:
                continue
            a = by_ell[k] - self.mean[:, None] if k == 0 else by_ell[k]
            out[:, column:column + len(p)] = (p.astype(np.float32) @ a).T
            column += len(p)
        return out

    def wiener(self) -> NDArray[np.float64]:
        """``(m,)`` Wiener weights ``s / (1 + s)`` (signal estimate from ``z``)."""
        return self.signal / (1 + self.signal)
