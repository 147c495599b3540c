r"""A Fourier–Bessel basis on the disc and a fast expansion of images in it.

Basis
-----
On the disc ``r < R`` (pixels from the box centre ``(N//2, N//2)``, ``x = col - N//2``,
``y = row - N//2``, ``θ = atan2(y, x)``, as in :mod:`csplugin.core.conventions`)

.. math::

    ψ_{k,q}(r, θ) = c_{k,q}\, J_{|k|}(λ_{k,q} r / R)\, e^{i k θ},
    \qquad c_{k,q} = \frac{1}{\sqrt{π}\, R\, |J_{|k|+1}(λ_{k,q})|},

where ``λ_{k,q}`` is the ``q``-th positive zero of ``J_{|k|}`` (:func:`scipy.special.jn_zeros`).
The functions are orthonormal on the disc (unit pixel area) and vanish on its edge. The basis
keeps every ``(k, q)`` with ``λ_{k,q} ≤ 2π R f_max`` (``f_max`` in cycles/pixel, at most the
Nyquist 0.5): a function of that band limit is then represented on the disc. Its size is about
the number of pixels in the disc (``π R²``) at Nyquist.

Only ``k ≥ 0`` is stored: a real image has ``a_{-k,q} = conj(a_{k,q})``. With that:

* rotating the image content by ``R(α)`` (``f'(p) = f(R(-α) p)``, what
  :func:`csplugin.engines.transform.align_images` does with angle ``α``) maps ``a_{k,q}`` to
  ``a_{k,q} e^{-ikα}``;
* mirroring ``y -> -y`` (rows reflected about ``N//2``) maps ``a_{k,q}`` to ``conj(a_{k,q})``.

Expansion
---------
``a_{k,q} = <ψ_{k,q}, f>`` is computed as in fast steerable PCA (Zhao, Shkolnisky & Singer,
IEEE TCI 2016) but in real space: the image is sampled on a polar grid (bilinear
interpolation, a compiled gather), the angular integral is an FFT over ``θ`` and the
radial one a Gauss–Legendre quadrature against ``c_{k,q} J_k(λ_{k,q} r / R) r``. Cost per
image: ``O(N² + n_r n_θ log n_θ + n_r · n_coef)``, a few microseconds at 64 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
import scipy.sparse as sparse
from numba import njit, prange
from numpy.typing import NDArray
from scipy.fft import next_fast_len
from scipy.special import jn_zeros, jv

from csplugin.core.conventions import centred_grid
from csplugin.engines.fft import fft, rfft

#: Largest usable band limit (cycles/pixel).
NYQUIST = 0.5
#: Images per block of the expansion (their transposed pixels stay in cache).
_BLOCK = 512


def bessel_zeros(max_zero: float
                 ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """All positive zeros ``λ_{k,q} ≤ max_zero`` of ``J_k``, ``k ≥ 0``, sorted by ``(k, q)``.

    Returns
    -------
    ells, qs, zeros
        ``(n,)`` angular frequency ``k``, 1-based radial index ``q`` and the zero ``λ_{k,q}``.
    """
    ells, qs, zeros = [], [], []
    k = 0
    while True:
        count = int(max_zero / np.pi) + 2  # J_k has fewer than this many zeros below max_zero
        z = jn_zeros(k, count)
        z = z[z <= max_zero]
        if len(z) == 0:  # the first zero of J_k grows with k: no later k has any either
            break
        ells.append(np.full(len(z), k))
        qs.append(np.arange(1, len(z) + 1))
        zeros.append(z)
        k += 1
    if not zeros:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return (np.concatenate(ells).astype(np.int64), np.concatenate(qs).astype(np.int64),
            np.concatenate(zeros))


@dataclass(frozen=True, eq=False)
class FBBasis:
    """Fourier–Bessel basis for ``(N, N)`` images on the disc of radius ``radius``.

    Parameters
    ----------
    size
        Image size ``N`` (pixels).
    radius
        Disc radius ``R`` in pixels; default ``N // 2``. Pixels outside it are ignored by
        the expansion (and used for the noise estimate by the steerable PCA).
    max_frequency
        Band limit ``f_max`` in cycles/pixel, ``0 < f_max ≤ 0.5``.

    Attributes
    ----------
    ells, qs, zeros, norms
        ``(n_coef,)`` angular frequency ``k ≥ 0``, radial index ``q ≥ 1``, Bessel zero
        ``λ_{k,q}`` and normalisation ``c_{k,q}`` of each coefficient, sorted by ``(k, q)``.
    """

    size: int
    radius: float | None = None
    max_frequency: float = NYQUIST
    ells: NDArray[np.int64] = field(init=False, repr=False)
    qs: NDArray[np.int64] = field(init=False, repr=False)
    zeros: NDArray[np.float64] = field(init=False, repr=False)
    norms: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 8:
            raise ValueError(f"image size must be an integer ≥ 8 pixels, got {self.size}")
        radius = self.size // 2 if self.radius is None else float(self.radius)
        if not 2 <= radius <= self.size / 2:
            raise ValueError(f"disc radius must lie in [2, {self.size / 2:g}] pixels for "
                             f"{self.size}-pixel images, got {radius:g}")
        if not 0 < self.max_frequency <= NYQUIST:
            raise ValueError(f"max_frequency must lie in (0, {NYQUIST}] cycles/pixel, "
                             f"got {self.max_frequency:g}")
        object.__setattr__(self, "radius", radius)
        ells, qs, zeros = bessel_zeros(2 * np.pi * radius * self.max_frequency)
        if len(zeros) == 0:
            raise ValueError(f"a {radius:g}-pixel disc at max_frequency {self.max_frequency:g} "
                             "holds no Fourier-Bessel function; raise either")
        for name, value in (("ells", ells), ("qs", qs), ("zeros", zeros),
                            ("norms", 1 / (np.sqrt(np.pi) * radius * np.abs(jv(ells + 1, zeros))))):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ layout
    @property
    def disc_radius(self) -> float:
        """The disc radius ``R`` in pixels (``radius`` resolved)."""
        return float(self.radius)  # type: ignore[arg-type]

    @property
    def count(self) -> int:
        """Number of stored coefficients ``n_coef`` (``k ≥ 0``)."""
        return len(self.ells)

    @property
    def real_dimension(self) -> int:
        """Real dimension of the span of real images: ``n(k=0) + 2 n(k>0)``."""
        return int(np.sum(np.where(self.ells == 0, 1, 2)))

    @property
    def max_ell(self) -> int:
        """Largest angular frequency ``k`` in the basis."""
        return int(self.ells[-1])

    @cached_property
    def q_max(self) -> int:
        """Largest number of radial functions of one angular frequency (that of ``k = 0``)."""
        return int(np.max(np.diff(self.ell_starts)))

    @cached_property
    def ell_starts(self) -> NDArray[np.int64]:
        """``(max_ell + 2,)``: coefficients of frequency ``k`` are ``[starts[k], starts[k+1])``."""
        return np.searchsorted(self.ells, np.arange(self.max_ell + 2)).astype(np.int64)

    # ------------------------------------------------------------------ quadrature grid
    @cached_property
    def _grid(self) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
        """Gauss–Legendre radii ``(n_r,)`` on ``[0, R]``, their weights ``(n_r,)``, ``n_θ``."""
        r_max = self.disc_radius
        n_r = int(np.ceil(1.5 * r_max)) + 4
        nodes, weights = np.polynomial.legendre.leggauss(n_r)
        n_theta = next_fast_len(max(2 * self.max_ell + 2, int(np.ceil(2 * np.pi * r_max)), 8))
        n_theta += n_theta % 2
        return r_max * (nodes + 1) / 2, r_max * weights / 2, n_theta

    @cached_property
    def _taps(self) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Bilinear taps of the polar grid, points ordered ``(θ, r)``: pixel indices
        ``(n_θ n_r, 4)`` into the flattened image and their weights ``(n_θ n_r, 4)``."""
        radii, _, n_theta = self._grid
        theta = 2 * np.pi * np.arange(n_theta) / n_theta
        x = (np.cos(theta)[:, None] * radii).ravel() + self.size // 2
        y = (np.sin(theta)[:, None] * radii).ravel() + self.size // 2
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        fx, fy = x - x0, y - y0
        x1, y1 = np.minimum(x0 + 1, self.size - 1), np.minimum(y0 + 1, self.size - 1)  # weight 0
        index = np.stack([y0 * self.size + x0, y0 * self.size + x1, y1 * self.size + x0,
                          y1 * self.size + x1], axis=1)
        weight = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=1)
        return index.astype(np.int32), weight.astype(np.float32)

    @cached_property
    def _radial(self) -> NDArray[np.float32]:
        """``(max_ell + 1, q_max, n_r)`` radial quadrature weights (angular step included),
        zero-padded in ``q``."""
        radii, weights, n_theta = self._grid
        starts = self.ell_starts
        out = np.zeros((self.max_ell + 1, self.q_max, len(radii)), np.float32)
        scale = weights * radii * (2 * np.pi / n_theta)
        for k in range(self.max_ell + 1):
            sl = slice(starts[k], starts[k + 1])
            z, c = self.zeros[sl], self.norms[sl]
            out[k, : len(z)] = c[:, None] * jv(k, np.outer(z, radii) / self.radius) * scale
        return out

    # ------------------------------------------------------------------ transforms
    def expand(self, images: NDArray[np.floating]) -> NDArray[np.complex64]:
        """Fourier–Bessel coefficients of real images.

        Parameters
        ----------
        images
            ``(n, N, N)`` real images (pixels outside the disc are ignored).

        Returns
        -------
        ndarray
            ``(n, n_coef)`` complex64 coefficients ``a_{k,q} ≈ <ψ_{k,q}, f>``, ordered as
            :attr:`ells` / :attr:`qs`.
        """
        return self.flatten(self.expand_by_ell(images))

    def expand_by_ell(self, images: NDArray[np.floating]) -> NDArray[np.complex64]:
        """The coefficients of :meth:`expand` grouped by angular frequency (the layout the
        steerable PCA works in).

        Parameters
        ----------
        images
            ``(n, N, N)`` real images.

        Returns
        -------
        ndarray
            ``(max_ell + 1, q_max, n)`` complex64: ``out[k, q - 1, i] = a_{k,q}`` of image
            ``i``; zero where ``q`` exceeds the number of zeros of ``J_k`` in the band.
        """
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (self.size, self.size):
            raise ValueError(f"expected images of shape (n, {self.size}, {self.size}), "
                             f"got {images.shape}")
        n = len(images)
        out = np.empty((self.max_ell + 1, self.q_max, n), np.complex64)
        for first in range(0, n, _BLOCK):  # blocks keep the transposed pixels in cache
            block = images[first:first + _BLOCK].reshape(-1, self.size**2)
            pixels = np.ascontiguousarray(block.T, dtype=np.float32)  # (N², b)
            polar = np.empty((len(self._taps[0]), len(block)), np.float32)
            _sample_polar(pixels, *self._taps, polar)
            out[:, :, first:first + len(block)] = self._from_polar(polar)
        return out

    def flatten(self, by_ell: NDArray[np.complexfloating]) -> NDArray[np.complexfloating]:
        """``(max_ell + 1, q_max, n)`` grouped coefficients -> ``(n, n_coef)``."""
        out = np.empty((by_ell.shape[-1], self.count), by_ell.dtype)
        starts = self.ell_starts
        for k in range(self.max_ell + 1):
            out[:, starts[k]:starts[k + 1]] = by_ell[k, : starts[k + 1] - starts[k]].T
        return out

    def _from_polar(self, polar: NDArray[np.float32]) -> NDArray[np.complex64]:
        """``(n_θ n_r, b)`` polar samples -> ``(max_ell + 1, q_max, b)`` coefficients by ``k``
        (zero-padded in ``q``)."""
        radii, _, n_theta = self._grid
        spectrum = rfft(polar.reshape(n_theta, len(radii), -1), axis=0)
        spectrum = np.ascontiguousarray(spectrum[: self.max_ell + 1], np.complex64)
        # complex (K, n_r, b) seen as real (K, n_r, 2b): one real batched product for both parts
        return np.matmul(self._radial, spectrum.view(np.float32)).view(np.complex64)

    @cached_property
    def noise_gram(self) -> tuple[NDArray[np.complex128], ...]:
        """Covariance of the coefficients of unit white pixel noise, per angular frequency.

        ``noise_gram[k]`` is the ``(n_q(k), n_q(k))`` Hermitian matrix ``M_k M_k^H`` of the
        expansion operator ``M_k = R_k D_k S`` (``S`` the bilinear sampling, ``D_k`` the
        angular DFT at ``k``, ``R_k`` the radial quadrature), computed exactly: ``S S^T``
        couples polar points sharing pixels and only depends on their two radii and their
        angle difference, so ``D_k S S^T D_k^H`` for every ``k`` is one FFT over that
        difference. White noise of variance ``σ²`` gives coefficient covariance
        ``σ² · noise_gram[k]``; it is close to ``σ² I`` at low radial frequency and smaller
        near Nyquist, where bilinear sampling smooths.
        """
        index, weight = self._taps
        radii, _, n_theta = self._grid
        n_r = len(radii)
        sampling = sparse.csr_matrix(
            (weight.ravel().astype(np.float64), (np.repeat(np.arange(len(index)), 4),
                                                 index.ravel())),
            shape=(len(index), self.size**2))
        shared = (sampling @ sampling.T).tocoo()  # polar points ordered (θ, r)
        theta1, r1 = np.divmod(shared.row, n_r)
        theta2, r2 = np.divmod(shared.col, n_r)
        by_difference = np.bincount((r1 * n_r + r2) * n_theta + (theta1 - theta2) % n_theta,
                                    shared.data, n_r * n_r * n_theta)
        spectra = fft(by_difference.reshape(n_r, n_r, n_theta), axis=-1)  # e^{-ik(θ1 - θ2)}
        radial = self._radial.astype(np.float64)
        total = radial @ spectra[..., : self.max_ell + 1].transpose(2, 0, 1) \
            @ radial.transpose(0, 2, 1)
        starts = self.ell_starts
        grams = []
        for k in range(self.max_ell + 1):
            q = int(starts[k + 1] - starts[k])
            gram = total[k, :q, :q].copy()
            gram.setflags(write=False)
            grams.append(gram)
        return tuple(grams)

    def evaluate(self, coefs: NDArray[np.complexfloating]) -> NDArray[np.float64]:
        """Real images ``Σ_{k,q} a_{k,q} ψ_{k,q}`` (both signs of ``k``) on the pixel grid.

        Direct summation over a dense ``(N², n_coef)`` matrix: meant for tests and small
        batches, not for streaming.

        Parameters
        ----------
        coefs
            ``(n, n_coef)`` coefficients, ordered as :attr:`ells`.

        Returns
        -------
        ndarray
            ``(n, N, N)`` float64 images, zero outside the disc.
        """
        coefs = np.atleast_2d(coefs)
        y, x = centred_grid(self.size)
        r, theta = np.hypot(x, y).ravel(), np.arctan2(y, x).ravel()
        inside = r < self.radius
        phi = np.zeros((self.size**2, self.count), np.complex128)
        phi[inside] = (self.norms * jv(self.ells, np.outer(r[inside], self.zeros) / self.radius)
                       * np.exp(1j * np.outer(theta[inside], self.ells)))
        weight = np.where(self.ells == 0, 1.0, 2.0)  # +k and -k terms: 2 Re(a ψ)
        return np.real((coefs * weight) @ phi.T).reshape(-1, self.size, self.size)


@lru_cache(maxsize=8)
def fb_basis(size: int, radius: float | None = None, max_frequency: float = NYQUIST) -> FBBasis:
    """A shared :class:`FBBasis` (its grids and :attr:`FBBasis.noise_gram` computed once)."""
    return FBBasis(size, radius, max_frequency)


@njit(parallel=True, cache=True, fastmath=True)
def _sample_polar(pixels, index, weight, out):  # pragma: no cover - compiled
    """``out[p, j] = Σ_t weight[p, t] pixels[index[p, t], j]`` for ``(N², b)`` pixels."""
    for p in prange(index.shape[0]):
        i0, i1, i2, i3 = index[p, 0], index[p, 1], index[p, 2], index[p, 3]
        w0, w1, w2, w3 = weight[p, 0], weight[p, 1], weight[p, 2], weight[p, 3]
        for j in range(pixels.shape[1]):
            out[p, j] = (w0 * pixels[i0, j] + w1 * pixels[i1, j] + w2 * pixels[i2, j]
                         + w3 * pixels[i3, j])
