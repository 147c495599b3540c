"""Alignment search kernels (arrays in, alignments out; no I/O).

Every kernel finds, for raw member images ``P`` and a reference ``T`` (both ``(L, L)``,
internal pixel convention of :mod:`csplugin.core.conventions`), the alignment ``(θ, s)`` whose
aligned image ``A(q) = P(R(-θ) q - s)`` best matches ``T``. Mirrored members are mirrored
(:func:`csplugin.core.conventions.mirror_y`) by the caller first.

Polar search (BFR/BFSR)
    For a trial shift ``s`` the member is sampled on a polar grid about ``-s``:
    ``p(r, φ) = P(r (cos φ, sin φ) - s)``, so ``A(r, α) = p(r, α - θ)`` and the correlation
    with ``t(r, α) = T(r (cos α, sin α))`` over all rotations is one circular
    cross-correlation along ``φ``: ``c(θ) = irfft(Σ_r r · t̂(r) · conj(p̂(r)))``
    (``r`` weights the polar area element). Bilinear sampling, radii 1 .. L/2 - 1 px,
    ``n_angles`` angles; the peak is refined by a parabola through its neighbours.
Reddy–Chatterji (RC)
    The Fourier magnitude is shift-invariant and turns with the image, so the rotation is
    found (modulo π) by the same circular correlation of log-polar samples of the
    windowed (Hann) magnitude spectra, weighted by frequency (a high-pass emphasis). Both
    candidates ``θ`` and ``θ + π`` are tried: the member is rotated
    (:func:`~csplugin.engines.transform.align_images`) and cross-correlated with ``T`` (FFT,
    periodic, peak within ``max_shift``, parabolic sub-pixel refinement) giving a
    translation ``t`` of the rotated image, i.e. ``s = R(-θ) t``. The better-correlated
    candidate wins.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from numba import njit, prange

from csplugin.engines import fft
from csplugin.engines.transform import align_images

__all__ = ["shift_grid", "polar_samples", "rotational_search", "rotational_correlation",
           "bfsr_search", "rc_search", "bfs_rc_search"]


def shift_grid(radius: float) -> np.ndarray:
    """``(J, 2)`` integer shifts ``(dx, dy)`` with ``|d| <= radius``, ``(0, 0)`` first."""
    r = int(np.floor(radius))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    keep = x**2 + y**2 <= radius**2
    grid = np.stack([x[keep], y[keep]], axis=1).astype(np.float64)
    return grid[np.argsort(np.hypot(grid[:, 0], grid[:, 1]), kind="stable")]


def polar_samples(images: np.ndarray, origins: np.ndarray, radii: np.ndarray,
                  n_angles: int, span: float = 2 * np.pi) -> np.ndarray:
    """Bilinear polar samples ``p[i, j, a, k] = P_i(radii[a] (cos φ_k, sin φ_k) - origins[i, j])``.

    Parameters
    ----------
    images
        ``(m, L, L)`` raw images (zero outside the box).
    origins
        ``(m, J, 2)`` trial shifts ``s = (s_x, s_y)`` in pixels.
    radii
        ``(R,)`` radii in pixels.
    n_angles, span
        ``K``: ``φ_k = span · k / K`` (``span = π`` suffices for centrosymmetric images).

    Returns
    -------
    np.ndarray
        ``(m, J, R, K)`` float32.
    """
    images = np.ascontiguousarray(images, np.float32)
    origins = np.asarray(origins, np.float64)
    phi = span * np.arange(n_angles) / n_angles
    out = np.empty((images.shape[0], origins.shape[1], radii.size, n_angles), np.float32)
    _polar(images, np.ascontiguousarray(-origins[..., 0]), np.ascontiguousarray(-origins[..., 1]),
           np.asarray(radii, np.float64), np.cos(phi), np.sin(phi), out)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _polar(images, ox, oy, radii, cos_a, sin_a, out):
    m, n = images.shape[0], images.shape[2]
    n_j, n_r, n_k = ox.shape[1], radii.shape[0], cos_a.shape[0]
    h = n // 2
    for t in prange(m * n_j):
        i = t // n_j
        j = t - i * n_j
        img = images[i]
        for a in range(n_r):
            r = radii[a]
            for k in range(n_k):
                col = h + r * cos_a[k] + ox[i, j]
                row = h + r * sin_a[k] + oy[i, j]
                out[i, j, a, k] = _bilinear_at(img, row, col, n)


@njit(cache=True, inline="always")
def _bilinear_at(img, row, col, n):
    """Bilinear value of ``img`` at (row, col), zero outside the box."""
    if 0.0 <= row < n - 1 and 0.0 <= col < n - 1:  # the common case: no bounds checks
        ir = int(row)
        ic = int(col)
        fr = row - ir
        fc = col - ic
        top = img[ir, ic] + fc * (img[ir, ic + 1] - img[ir, ic])
        bottom = img[ir + 1, ic] + fc * (img[ir + 1, ic + 1] - img[ir + 1, ic])
        return top + fr * (bottom - top)
    r0 = np.floor(row)
    c0 = np.floor(col)
    fr = row - r0
    fc = col - c0
    ir = int(r0)
    ic = int(c0)
    v = 0.0
    if 0 <= ir < n:
        if 0 <= ic < n:
            v += (1 - fr) * (1 - fc) * img[ir, ic]
        if 0 <= ic + 1 < n:
            v += (1 - fr) * fc * img[ir, ic + 1]
    if 0 <= ir + 1 < n:
        if 0 <= ic < n:
            v += fr * (1 - fc) * img[ir + 1, ic]
        if 0 <= ic + 1 < n:
            v += fr * fc * img[ir + 1, ic + 1]
    return v


def rotational_search(reference: np.ndarray, samples: np.ndarray, weights: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Best rotation of polar samples against a polar reference (module docstring).

    Parameters
    ----------
    reference
        ``(R, K)`` polar samples of ``T``.
    samples
        ``(..., R, K)`` polar samples of members.
    weights
        ``(R,)`` radial weights (``r`` for the area element).

    Returns
    -------
    (angles, scores)
        ``(...)`` θ in radians [0, 2π) and the weighted normalised correlation at the
        (parabola-refined) peak, in [-1, 1].
    """
    c = rotational_correlation(reference, samples, weights)
    position, value = _parabolic_peak(c)
    return (2 * np.pi * position / c.shape[-1]) % (2 * np.pi), value


def rotational_correlation(reference: np.ndarray, samples: np.ndarray, weights: np.ndarray
                           ) -> np.ndarray:
    """``c[..., m]``: weighted normalised correlation of the reference with each member
    rotated by ``θ_m = 2π m / K`` (arguments as :func:`rotational_search`)."""
    n_k = reference.shape[-1]
    w = np.asarray(weights, np.float32)
    reference = np.asarray(reference, np.float32)
    samples = np.asarray(samples, np.float32)
    t_hat = _centred_rfft(reference, w)
    p_hat = _centred_rfft(samples, w)
    cross = (p_hat * (np.conj(t_hat) * w[:, None])).sum(axis=-2).conj()
    c = fft.irfft(cross, n=n_k, axis=-1)
    norm = np.sqrt(_weighted_power(reference, w) * _weighted_power(samples, w))
    with np.errstate(divide="ignore", invalid="ignore"):
        return c / norm[..., None]


def _centred_rfft(samples: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``rfft`` along angles of ``(..., R, K)`` samples minus their ``w``-weighted mean
    (the mean only changes the zero-frequency column)."""
    n_k = samples.shape[-1]
    hat = fft.rfft(samples, axis=-1)
    mean = (hat[..., 0].real * w).sum(axis=-1) / (w.sum() * n_k)
    hat[..., 0] -= (mean * n_k)[..., None]
    return hat


def _weighted_power(samples: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Σ_r w_r Σ_φ (p(r, φ) - m)²`` of ``(..., R, K)`` samples, ``m`` their ``w``-weighted
    mean: ``Σ_r w_r Σ_φ p² - (Σ_r w_r Σ_φ p)² / (K Σ_r w_r)``."""
    squares = np.einsum("...k,...k->...", samples, samples, dtype=np.float64) @ w
    sums = np.einsum("...k->...", samples, dtype=np.float64) @ w
    return squares - sums**2 / (samples.shape[-1] * w.sum(dtype=np.float64))


def _parabolic_peak(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-sample peak position and height along the last (circular) axis of ``c``."""
    n = c.shape[-1]
    m = np.argmax(np.nan_to_num(c, nan=-np.inf), axis=-1)[..., None]
    y0 = np.take_along_axis(c, (m - 1) % n, -1)[..., 0]
    y1 = np.take_along_axis(c, m, -1)[..., 0]
    y2 = np.take_along_axis(c, (m + 1) % n, -1)[..., 0]
    denom = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(denom < 0, 0.5 * (y0 - y2) / denom, 0.0)
    delta = np.clip(np.nan_to_num(delta), -0.5, 0.5)
    return m[..., 0] + delta, y1 - 0.25 * (y0 - y2) * delta


def bfsr_search(images: np.ndarray, reference: np.ndarray, origins: np.ndarray,
                offsets: np.ndarray, n_angles: int = 360) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force rotation (+ shift) search: every trial shift ``origins[i] + offsets[j]``.

    Parameters
    ----------
    images
        ``(m, L, L)`` raw members (already mirrored where needed).
    reference
        ``(L, L)`` the reference ``T``.
    origins
        ``(m, 2)`` shift each member's trial shifts start from.
    offsets
        ``(J, 2)`` shift offsets (``[[0, 0]]``: rotation only).
    n_angles
        Rotation grid (refined by a parabola).

    Returns
    -------
    (angles, shifts)
        ``(m,)`` θ radians and ``(m, 2)`` s pixels.
    """
    box = reference.shape[-1]
    radii = np.arange(1, box // 2, dtype=np.float64)
    ref = polar_samples(reference[None], np.zeros((1, 1, 2)), radii, n_angles)[0, 0]
    trials = np.asarray(origins, np.float64)[:, None, :] + np.asarray(offsets)[None]
    angles, scores = rotational_search(ref, polar_samples(images, trials, radii, n_angles),
                                       radii)
    best = np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1)
    rows = np.arange(len(images))
    return angles[rows, best], trials[rows, best]


# ------------------------------------------------------------------------------ Reddy-Chatterji
def _hann(box: int) -> np.ndarray:
    w = np.hanning(box + 2)[1:-1]
    return np.outer(w, w)


def _spectrum_polar(images: np.ndarray, radii: np.ndarray, n_angles: int) -> np.ndarray:
    """``(m, R, K)`` log-polar samples of ``ρ · |F|`` of the de-meaned, Hann-windowed images,
    ``K`` angles over [0, π) (the magnitude of a real image's transform is centrosymmetric)."""
    box = images.shape[-1]
    window = _hann(box)
    if box % 2 == 0:  # (-1)^(row + col) centres the transform: no fftshift copy
        window = window * (1 - 2 * (np.indices((box, box)).sum(axis=0) % 2))
    x = (images - images.mean(axis=(-2, -1), keepdims=True)) * window.astype(np.float32)
    spectra = np.abs(fft.fft2(x.astype(np.float32)))
    if box % 2:
        spectra = sfft.fftshift(spectra, axes=(-2, -1))
    samples = polar_samples(spectra, np.zeros((len(images), 1, 2)), radii, n_angles,
                            span=np.pi)[:, 0]
    return samples * radii[:, None].astype(np.float32)


def _rc_radii(box: int) -> np.ndarray:
    return np.geomspace(2.0, box // 2 - 2, max(8, box // 2))


def _translation(reference: np.ndarray, rotated: np.ndarray, max_shift: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``t`` ``(m, 2)`` maximising ``Σ T(q) B(q - t)`` and its normalised peak ``(m,)``."""
    box = reference.shape[-1]
    t = reference - reference.mean()
    b = rotated - rotated.mean(axis=(-2, -1), keepdims=True)
    c = fft.irfft2(fft.rfft2(t) * np.conj(fft.rfft2(b)), s=(box, box))
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant image: NaN, never best
        c /= np.sqrt((t * t).sum() * (b * b).sum(axis=(-2, -1)))[:, None, None]
    f = np.fft.fftfreq(box) * box  # periodic offsets of each index
    allowed = np.hypot(f[:, None], f[None, :]) <= max_shift
    c_masked = np.where(allowed & ~np.isnan(c), c, -np.inf)
    flat = np.argmax(c_masked.reshape(len(c), -1), axis=1)
    iy, ix = np.unravel_index(flat, (box, box))
    rows = np.arange(len(c))
    peak = c[rows, iy, ix]
    dy = _parabola_1d(c[rows, (iy - 1) % box, ix], peak, c[rows, (iy + 1) % box, ix])
    dx = _parabola_1d(c[rows, iy, (ix - 1) % box], peak, c[rows, iy, (ix + 1) % box])
    return np.stack([f[ix] + dx, f[iy] + dy], axis=1), peak


def _parabola_1d(y0: np.ndarray, y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
    denom = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(denom < 0, 0.5 * (y0 - y2) / denom, 0.0)
    return np.clip(np.nan_to_num(d), -0.5, 0.5)


def _rc_rotation(images: np.ndarray, reference: np.ndarray, n_angles: int) -> np.ndarray:
    """RC rotation modulo π, ``(m,)`` radians in [0, π) (``n_angles / 2`` samples over π)."""
    radii = _rc_radii(reference.shape[-1])
    half = max(4, n_angles // 2)
    ref = _spectrum_polar(reference[None], radii, half)[0]
    angles, _ = rotational_search(ref, _spectrum_polar(images, radii, half),
                                  np.ones(radii.size))
    return angles / 2  # rotational_search reads its K samples as a full turn


def _to_shift(theta: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``s = R(-θ) t`` for ``(m,)`` angles and ``(m, 2)`` translations of the rotated image."""
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([c * t[:, 0] + s * t[:, 1], -s * t[:, 0] + c * t[:, 1]], axis=1)


def rc_search(images: np.ndarray, reference: np.ndarray, n_angles: int = 360,
              max_shift: float | None = None, interpolation: str = "linear"
              ) -> tuple[np.ndarray, np.ndarray]:
    """Reddy–Chatterji registration of members ``(m, L, L)`` to ``reference`` ``(L, L)``.

    ``max_shift`` (default ``L/4``) bounds the translation. Returns ``(m,)`` θ radians and
    ``(m, 2)`` s pixels (module docstring).
    """
    box = reference.shape[-1]
    max_shift = box / 4 if max_shift is None else max_shift
    theta0 = _rc_rotation(images, reference, n_angles)
    best_theta = np.zeros(len(images))
    best_shift = np.zeros((len(images), 2))
    best_score = np.full(len(images), -np.inf)
    zero = np.zeros((len(images), 2))
    for theta in (theta0, (theta0 + np.pi) % (2 * np.pi)):
        rotated = align_images(images, theta, zero, interpolation)
        t, score = _translation(reference, rotated, max_shift)
        better = score > best_score
        best_theta[better], best_score[better] = theta[better], score[better]
        best_shift[better] = _to_shift(theta, t)[better]
    return best_theta, best_shift


def bfs_rc_search(images: np.ndarray, reference: np.ndarray, origins: np.ndarray,
                  offsets: np.ndarray, n_angles: int = 360, interpolation: str = "linear"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force shifts ``origins[i] + offsets[j]`` with an RC rotation for each.

    Each member is shifted by every trial ``s`` (``Q(p) = P(p - s)``) and its RC rotation
    found (modulo π); of all trials and both candidates ``θ``, ``θ + π``, the one whose
    aligned image ``A(q) = P(R(-θ) q - s)`` correlates best with ``reference`` (the polar
    correlation of :func:`rotational_correlation`, interpolated at ``θ``) wins. Returns
    ``(m,)`` θ radians and ``(m, 2)`` s pixels.
    """
    m, box = len(images), reference.shape[-1]
    offsets = np.asarray(offsets, np.float64)
    n_j = len(offsets)
    trials = np.asarray(origins, np.float64)[:, None, :] + offsets[None]  # (m, J, 2)
    repeated = np.repeat(np.ascontiguousarray(images, np.float32), n_j, axis=0)
    shifted = align_images(repeated, np.zeros(m * n_j), trials.reshape(-1, 2), interpolation)
    theta0 = _rc_rotation(shifted, reference, n_angles).reshape(m, n_j)
    radii = np.arange(1, box // 2, dtype=np.float64)
    ref = polar_samples(reference[None], np.zeros((1, 1, 2)), radii, n_angles)[0, 0]
    c = rotational_correlation(ref, polar_samples(images, trials, radii, n_angles), radii)
    candidates = np.stack([theta0, theta0 + np.pi], axis=-1) % (2 * np.pi)  # (m, J, 2)
    position = candidates / (2 * np.pi) * n_angles
    low = np.floor(position).astype(np.int64)
    frac = position - low
    at = np.take_along_axis
    scores = (1 - frac) * at(c, low % n_angles, -1) + frac * at(c, (low + 1) % n_angles, -1)
    best = np.argmax(np.nan_to_num(scores, nan=-np.inf).reshape(m, 2 * n_j), axis=1)
    rows, j, which = np.arange(m), best // 2, best % 2
    return candidates[rows, j, which], trials[rows, j]
