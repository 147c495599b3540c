"""Apply stored 2D alignments (in-plane rotation + shift) to particle images.

Convention
----------
Pixel coordinates are taken relative to the box centre, ``x = col - N//2`` and
``y = row - N//2`` (``img[row, col]``, x is the fast axis), and
``R(a) = [[cos a, -sin a], [sin a, cos a]]`` acts on column vectors ``(x, y)``.
A particle with in-plane angle ``theta`` (radians) and shift ``s = (s_x, s_y)``
(pixels) is aligned as ::

    A(q) = P(R(-theta) q - s)

i.e. its content is shifted by ``+s`` and then rotated by ``+theta`` about
``(N//2, N//2)``: a point ``p`` of the input ends up at ``R(theta) (p + s)``.
Both steps are composed into one affine map, so every output pixel is resampled
exactly once.  This is what ``relion_stack_create --apply_transformation`` does
with ``rlnAnglePsi = degrees(theta)`` and ``rlnOriginX/Y = s``.

Methods
-------
``"linear"``
    Bilinear interpolation, a bit-level re-implementation of RELION 3.1's
    ``applyGeometry`` (double precision).  Its kernel is a triangle, whose
    transfer function is ``sinc^2``: a shift by half a pixel attenuates
    Nyquist to zero and 0.25/px to ~0.71, so every aligned image is low-pass
    filtered by an amount that depends on its sub-pixel offset.
``"cubic"`` (default)
    Cubic B-spline interpolation with exact (recursive, mirror-boundary)
    prefiltering, as ``scipy.ndimage.map_coordinates(order=3,
    mode="mirror")``.  The resulting cardinal spline has a far flatter
    response (~0.96 at 0.25/px vs ~0.81 for bilinear's sinc^2 at the same
    frequency) and an interpolation error about 1000x smaller on smooth
    images; it is still not a perfect sinc, so the highest frequencies are
    somewhat damped.

Box edge
--------
For both methods an output pixel is nonzero only if its source point lies
inside the box, ``0 - 1e-6 <= col, row <= N - 1 + 1e-6`` (RELION's tolerance);
all other output pixels are set to 0, exactly as RELION does.  Inside the box,
``"linear"`` treats neighbours beyond the last row/column as 0 (again as RELION,
which only matters within 1e-6 px of the last row/column), while ``"cubic"``
computes its spline coefficients with a mirror-symmetric extension of the
image (no artificial step at the border).  Zero fill was chosen over e.g. the
border mean so that both methods have the same support as RELION, the result
does not depend on data-dependent statistics, and normalised particles (zero
background mean) get no step; consumers that are sensitive to the corners
(power spectra) should mask or apodise to the inscribed disc anyway.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numba import njit, prange
from numpy.typing import ArrayLike, NDArray

__all__ = ["INTERPOLATIONS", "align_images", "source_coordinates"]

INTERPOLATIONS: tuple[str, ...] = ("linear", "cubic")

_EPS = 1e-6  # RELION's XMIPP_EQUAL_ACCURACY: tolerance of the "inside the box" test
_POLE = np.sqrt(3.0) - 2.0  # pole of the cubic B-spline prefilter
_HORIZON = 24  # |pole|**24 < 2e-14: truncation of the causal initial sum
_PAD = 2  # mirror padding of the coefficient array (cubic needs indices -1..N)


def source_coordinates(angle: float, shift: ArrayLike, n: int) -> NDArray[np.float64]:
    """Source pixel of every output pixel, ``R(-angle) q - shift`` in array indices.

    Parameters
    ----------
    angle : float
        In-plane angle ``theta`` in radians.
    shift : array_like, shape (2,)
        Shift ``(s_x, s_y)`` in pixels.
    n : int
        Box size ``N``.

    Returns
    -------
    ndarray, shape (2, N, N), float64
        ``[0]`` is the source row (``y + N//2``), ``[1]`` the source column
        (``x + N//2``), so the result can be passed straight to
        ``scipy.ndimage.map_coordinates``.
    """
    c, s = np.cos(angle), np.sin(angle)
    sx, sy = np.asarray(shift, dtype=np.float64)
    y, x = np.mgrid[0:n, 0:n] - n // 2
    return np.stack([-s * x + c * y - sy + n // 2, c * x + s * y - sx + n // 2])


def align_images(
    images: ArrayLike,
    angles: ArrayLike,
    shifts: ArrayLike,
    interpolation: Literal["linear", "cubic"] = "cubic",
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Rotate and shift a stack of images in one resampling step.

    Output pixel ``q = (x, y)`` of image ``k`` is
    ``A_k(q) = P_k(R(-angles[k]) q - shifts[k])``, with coordinates relative
    to the box centre ``(N//2, N//2)`` (see the module docstring); source
    points outside the box give 0.

    Parameters
    ----------
    images : array_like, shape (n, N, N)
        Images of any real dtype (converted to float32).
    angles : array_like, shape (n,)
        In-plane angles ``theta`` in radians (RELION's ``rlnAnglePsi``).
    shifts : array_like, shape (n, 2)
        Shifts ``(s_x, s_y)`` in pixels (RELION's ``rlnOriginX/Y``).
    interpolation : {"cubic", "linear"}
        Cubic B-spline (default) or bilinear (identical to RELION).
    out : ndarray, shape (n, N, N), float32, C-contiguous, optional
        Array to write the result into (must not overlap ``images``).

    Returns
    -------
    ndarray, shape (n, N, N), float32
        The aligned images (``out`` if it was given).  Each image is computed
        independently, so results do not depend on batching or thread count.
    """
    imgs = np.ascontiguousarray(images, dtype=np.float32)
    if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2] or imgs.shape[1] < 2:
        raise ValueError(f"images must have shape (n, N, N) with N >= 2, got {imgs.shape}")
    n = imgs.shape[0]
    ang = np.asarray(angles, dtype=np.float64)
    sh = np.asarray(shifts, dtype=np.float64)
    if ang.shape != (n,) or sh.shape != (n, 2):
        raise ValueError(f"need angles of shape ({n},) and shifts ({n}, 2), got {ang.shape}, {sh.shape}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if out is None:
        out = np.empty(imgs.shape, dtype=np.float32)
    elif out.shape != imgs.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {imgs.shape}")
    if n:
        kernel = _align_cubic if interpolation == "cubic" else _align_linear
        kernel(imgs, np.cos(ang), np.sin(ang), sh, out)
    return out


@njit(parallel=True, cache=True)
def _align_linear(imgs, cos_t, sin_t, shifts, out):  # pragma: no cover - numba
    for k in prange(imgs.shape[0]):
        _bilinear(imgs[k], cos_t[k], sin_t[k], shifts[k, 0], shifts[k, 1], out[k])


@njit(parallel=True, cache=True)
def _align_cubic(imgs, cos_t, sin_t, shifts, out):  # pragma: no cover - numba
    n = imgs.shape[1]
    for k in prange(imgs.shape[0]):
        coef = np.empty((n + 2 * _PAD, n + 2 * _PAD), dtype=np.float32)
        _spline_coefficients(imgs[k], coef)
        _bspline(coef, cos_t[k], sin_t[k], shifts[k, 0], shifts[k, 1], out[k])


@njit(cache=True)
def _bilinear(img, c, s, sx, sy, out):  # pragma: no cover - numba
    """RELION's applyGeometry: truncating floor, zero beyond the last row/column."""
    n = img.shape[0]
    h = n // 2
    hi = n - 1 + _EPS
    for i in range(n):
        y = i - h
        for j in range(n):
            x = j - h
            u = c * x + s * y - sx + h
            v = -s * x + c * y - sy + h
            if u < -_EPS or u > hi or v < -_EPS or v > hi:
                out[i, j] = 0.0
                continue
            m1 = int(u)
            n1 = int(v)
            wx = u - m1
            wy = v - n1
            val = (1.0 - wy) * (1.0 - wx) * img[n1, m1]
            if m1 + 1 < n:
                val += (1.0 - wy) * wx * img[n1, m1 + 1]
            if n1 + 1 < n:
                val += wy * (1.0 - wx) * img[n1 + 1, m1]
                if m1 + 1 < n:
                    val += wy * wx * img[n1 + 1, m1 + 1]
            out[i, j] = val


@njit(cache=True)
def _bspline(coef, c, s, sx, sy, out):  # pragma: no cover - numba
    """Evaluate the cubic spline with mirror-padded coefficients ``coef``."""
    n = out.shape[0]
    h = n // 2
    hi = n - 1 + _EPS
    for i in range(n):
        y = i - h
        for j in range(n):
            x = j - h
            u = c * x + s * y - sx + h
            v = -s * x + c * y - sy + h
            if u < -_EPS or u > hi or v < -_EPS or v > hi:
                out[i, j] = 0.0
                continue
            iu = int(u)  # truncation: t < 0 only within _EPS, where the cubic piece is still exact
            iv = int(v)
            t = u - iu
            a0, a1, a2, a3 = _weights(t)
            t = v - iv
            b0, b1, b2, b3 = _weights(t)
            r = iv + _PAD - 1
            col = iu + _PAD - 1
            val = 0.0
            val += b0 * (a0 * coef[r, col] + a1 * coef[r, col + 1] + a2 * coef[r, col + 2] + a3 * coef[r, col + 3])
            r += 1
            val += b1 * (a0 * coef[r, col] + a1 * coef[r, col + 1] + a2 * coef[r, col + 2] + a3 * coef[r, col + 3])
            r += 1
            val += b2 * (a0 * coef[r, col] + a1 * coef[r, col + 1] + a2 * coef[r, col + 2] + a3 * coef[r, col + 3])
            r += 1
            val += b3 * (a0 * coef[r, col] + a1 * coef[r, col + 1] + a2 * coef[r, col + 2] + a3 * coef[r, col + 3])
            out[i, j] = val


@njit(cache=True, inline="always")
def _weights(t):  # pragma: no cover - numba
    """Cubic B-spline weights of the samples at offsets -1, 0, 1, 2 from ``t`` in [0, 1)."""
    t2 = t * t
    t3 = t2 * t
    w3 = t3 / 6.0
    w0 = 1.0 / 6.0 + 0.5 * (t2 - t) - w3
    w2 = t + w0 - 2.0 * w3
    w1 = 1.0 - w0 - w2 - w3
    return w0, w1, w2, w3


@njit(cache=True)
def _spline_coefficients(img, coef):  # pragma: no cover - numba
    """Cubic B-spline coefficients of ``img`` (mirror boundary), mirror-padded into ``coef``."""
    n = img.shape[0]
    tmp = img.T.copy()  # filter along x as rows of the transpose (vectorised over y)
    _filter_rows(tmp)
    inner = coef[_PAD : _PAD + n, _PAD : _PAD + n]
    inner[:] = tmp.T
    _filter_rows(inner)
    for p in range(1, _PAD + 1):  # mirror about the first/last sample: c[-p] = c[p]
        coef[_PAD - p] = coef[_PAD + p]
        coef[_PAD + n - 1 + p] = coef[_PAD + n - 1 - p]
    for p in range(1, _PAD + 1):
        coef[:, _PAD - p] = coef[:, _PAD + p]
        coef[:, _PAD + n - 1 + p] = coef[:, _PAD + n - 1 - p]


@njit(cache=True)
def _filter_rows(a):  # pragma: no cover - numba
    """In-place cubic B-spline prefilter along axis 0 (mirror boundary), gain 6 included."""
    n = a.shape[0]
    z = np.float32(_POLE)
    six = np.float32(6.0)
    period = 2 * n - 2
    m = a.shape[1]
    first = np.zeros(m, dtype=np.float32)
    zk = np.float32(1.0)
    for k in range(_HORIZON):
        r = k % period
        if r >= n:
            r = period - r
        for j in range(m):
            first[j] += zk * a[r, j]
        zk *= z
    for j in range(m):
        a[0, j] = six * first[j]
    for i in range(1, n):
        for j in range(m):
            a[i, j] = six * a[i, j] + z * a[i - 1, j]
    g = z / (z * z - np.float32(1.0))
    for j in range(m):
        a[n - 1, j] = g * (a[n - 1, j] + z * a[n - 2, j])
    for i in range(n - 2, -1, -1):
        for j in range(m):
            a[i, j] = z * (a[i + 1, j] - a[i, j])
