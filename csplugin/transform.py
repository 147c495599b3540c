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
_PAD = 2  # mirror padding of the coefficient array (cubic reads indices -1..N+1)


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
    if not (np.isfinite(ang).all() and np.isfinite(sh).all()):
        raise ValueError("angles and shifts must be finite")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if out is None:
        out = np.empty(imgs.shape, dtype=np.float32)
    elif out.shape != imgs.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {imgs.shape}")
    elif np.may_share_memory(out, imgs):
        raise ValueError("out must not overlap images")
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
    m = n + 2 * _PAD
    for k in prange(imgs.shape[0]):
        coef = np.empty((m, m), dtype=np.float32)
        work = np.empty((m, m), dtype=np.float32)
        _spline_coefficients(imgs[k], coef, work)
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
    """Evaluate the spline whose transposed, mirror-padded coefficients are ``coef``.

    Per output row, a vectorisable pass computes the 8 weights and the flat
    index of the 4x4 neighbourhood of every pixel; a second pass does the
    lookups.  Indices are clamped into the box (so every load is valid) and
    unsigned (so numba emits no negative-index fix-ups).
    """
    n = out.shape[0]
    m = coef.shape[1]
    h = n // 2
    hi = n - 1 + _EPS
    flat = coef.ravel()
    base = np.empty(n, dtype=np.uint64)
    wts = np.empty((8, n), dtype=np.float32)
    inside = np.empty(n, dtype=np.bool_)
    one, two, three, step = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(m)
    for i in range(n):
        y = i - h
        u0 = s * y - sx + h
        v0 = c * y - sy + h
        for j in range(n):
            x = j - h
            u = c * x + u0
            v = -s * x + v0
            inside[j] = (u >= -_EPS) & (u <= hi) & (v >= -_EPS) & (v <= hi)
            # truncation: t < 0 only within _EPS of the edge, where the cubic piece is still exact
            iu = min(max(int(u), 0), n - 1)
            iv = min(max(int(v), 0), n - 1)
            base[j] = (iu + _PAD - 1) * m + iv + _PAD - 1
            wts[0, j], wts[1, j], wts[2, j], wts[3, j] = _weights(np.float32(u - iu))
            wts[4, j], wts[5, j], wts[6, j], wts[7, j] = _weights(np.float32(v - iv))
        for j in range(n):
            b0, b1, b2, b3 = wts[4, j], wts[5, j], wts[6, j], wts[7, j]
            p = base[j]
            val = wts[0, j] * (b0 * flat[p] + b1 * flat[p + one] + b2 * flat[p + two] + b3 * flat[p + three])
            p += step
            val += wts[1, j] * (b0 * flat[p] + b1 * flat[p + one] + b2 * flat[p + two] + b3 * flat[p + three])
            p += step
            val += wts[2, j] * (b0 * flat[p] + b1 * flat[p + one] + b2 * flat[p + two] + b3 * flat[p + three])
            p += step
            val += wts[3, j] * (b0 * flat[p] + b1 * flat[p + one] + b2 * flat[p + two] + b3 * flat[p + three])
            out[i, j] = val if inside[j] else np.float32(0.0)


@njit(cache=True, inline="always")
def _weights(t):  # pragma: no cover - numba
    """6x the cubic B-spline weights of the samples at offsets -1, 0, 1, 2 from ``t`` in [0, 1).

    The factor 6 per axis cancels the gain the prefilter leaves out.
    """
    t2 = t * t
    t3 = t2 * t
    w0 = np.float32(1.0) + np.float32(3.0) * (t2 - t) - t3  # (1 - t)^3
    w2 = w0 + np.float32(6.0) * t - np.float32(2.0) * t3  # 1 + 3t + 3t^2 - 3t^3
    return w0, np.float32(6.0) - w0 - w2 - t3, w2, t3


@njit(cache=True)
def _spline_coefficients(img, coef, work):  # pragma: no cover - numba
    """``coef[PAD + x, PAD + y]`` = B-spline coefficients / 36 of ``img[y, x]``, mirror-padded.

    Mirror boundary as scipy's ``spline_filter(mode="mirror")``.  Both passes
    filter along axis 0 (vectorised over whole rows); the transpose in between
    goes through padded (non power-of-two) strides.  ``work`` is scratch of
    the same shape as ``coef``.
    """
    n = img.shape[0]
    for i in range(n):
        for j in range(n):
            work[_PAD + i, _PAD + j] = img[i, j]
    _filter_axis0(work, n)  # along y
    for i in range(n):
        for j in range(n):
            coef[_PAD + j, _PAD + i] = work[_PAD + i, _PAD + j]
    _filter_axis0(coef, n)  # along x
    for p in range(1, _PAD + 1):  # mirror about the first/last sample: c[-p] = c[p]
        for j in range(n):
            coef[_PAD - p, _PAD + j] = coef[_PAD + p, _PAD + j]
            coef[_PAD + n - 1 + p, _PAD + j] = coef[_PAD + n - 1 - p, _PAD + j]
    for i in range(n + 2 * _PAD):
        for p in range(1, _PAD + 1):
            coef[i, _PAD - p] = coef[i, _PAD + p]
            coef[i, _PAD + n - 1 + p] = coef[i, _PAD + n - 1 - p]


@njit(cache=True)
def _filter_axis0(a, n):  # pragma: no cover - numba
    """In-place cubic B-spline prefilter (without its gain of 6) along axis 0 of ``a[PAD:PAD+n, PAD:PAD+n]``.

    Causal/anticausal recursion with pole ``z = sqrt(3) - 2``; the causal
    start sums the mirror-extended signal over ``_HORIZON`` terms.
    """
    z = np.float32(_POLE)
    period = 2 * n - 2
    first = np.zeros(n, dtype=np.float32)
    zk = np.float32(1.0)
    for k in range(_HORIZON):
        r = k % period
        if r >= n:
            r = period - r
        for j in range(n):
            first[j] += zk * a[_PAD + r, _PAD + j]
        zk *= z
    for j in range(n):
        a[_PAD, _PAD + j] = first[j]
    for i in range(1, n):
        for j in range(n):
            a[_PAD + i, _PAD + j] += z * a[_PAD + i - 1, _PAD + j]
    g = z / (z * z - np.float32(1.0))
    last = _PAD + n - 1
    for j in range(n):
        a[last, _PAD + j] = g * (a[last, _PAD + j] + z * a[last - 1, _PAD + j])
    for i in range(n - 2, -1, -1):
        for j in range(n):
            a[_PAD + i, _PAD + j] = z * (a[_PAD + i + 1, _PAD + j] - a[_PAD + i, _PAD + j])
