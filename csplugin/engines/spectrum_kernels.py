"""Per-image and per-plane kernels of the averaged power spectra (pure array maths).

Conditioning (mean, sigma, soft mask) straight into an FFT plan's input, the padded
half-plane transforms, the half-to-full expansion and line weights, and the rotation of
half-plane psi-bin sums (:func:`rotate_bins`); conventions and the method are described in
:mod:`csplugin.engines.power_spectrum`, which re-exports the public names.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from numpy.typing import ArrayLike, NDArray

from csplugin.engines import fft
from csplugin.engines.transform import _EPS

__all__ = [
    "condition_images",
    "detector_line_weights",
    "fourier_transform",
    "half_to_full",
    "rotate_bins",
    "soft_circular_mask",
    "spectra_half",
]

Quantity = Literal["power", "amplitude"]
_GROUP = 4  # psi bins rotated together (their full planes in cache, each output row once)
_W = 8  # output pixels per vector step of the rotation (_bilinear8)
_I1, _I8, _I32, _I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_F32, _F64 = ir.FloatType(), ir.DoubleType()

def soft_circular_mask(box: int, radius: float = 0.45, edge: float = 0.05) -> NDArray[np.float32]:
    """Circular mask with a raised-cosine edge.

    Parameters
    ----------
    box : int
        Box size ``N``.
    radius, edge : float
        Fractions of ``N``: the mask is 1 for ``r <= radius * N``, falls as
        ``0.5 * (1 + cos(pi * t))`` over ``t = (r - radius * N) / (edge * N)``
        in ``[0, 1]``, and is 0 beyond.  The defaults reach 0 at ``r = N/2``.
        ``r`` is measured from ``(N//2, N//2)``.

    Returns
    -------
    ndarray, shape (N, N), float32
    """
    y, x = np.mgrid[0:box, 0:box] - box // 2
    t = np.clip((np.hypot(x, y) - radius * box) / (edge * box), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def condition_images(
    images: ArrayLike,
    *,
    subtract_mean: bool = True,
    normalize: bool = True,
    mask: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Per-image conditioning before the FFT.

    Parameters
    ----------
    images : array_like, shape (n, N, N)
        Raw images (any real dtype).
    subtract_mean : bool
        Subtract each image's mean (over all N² pixels).  Needed whenever the
        image is masked or zero-padded, so that the fill is at the mean level
        and creates no edge step.
    normalize : bool
        Also divide each image by its standard deviation (implies mean
        subtraction; constant images are left at 0).
    mask : ndarray, shape (N, N), optional
        Multiplied in after the mean subtraction (e.g. :func:`soft_circular_mask`).

    Returns
    -------
    ndarray, shape (n, N, N), float32
        A new array.
    """
    src = np.ascontiguousarray(images, dtype=np.float32)
    if src.ndim != 3:
        raise ValueError(f"images must have shape (n, N, N), got {src.shape}")
    weights = np.ones(src.shape[1:], np.float32) if mask is None else np.asarray(mask, np.float32)
    out = np.empty_like(src)
    _condition(src, out, subtract_mean or normalize, normalize, np.ascontiguousarray(weights))
    return out


@njit(parallel=True, cache=True, fastmath=True, nogil=True)  # fastmath: vectorised sums
def _condition(src, out, subtract_mean, normalize, mask):  # pragma: no cover - numba
    npix = src.shape[1] * src.shape[2]
    for i in prange(src.shape[0]):
        total = 0.0
        squares = 0.0
        for r in range(src.shape[1]):
            for c in range(src.shape[2]):
                v = np.float64(src[i, r, c])
                total += v
                squares += v * v
        mean = total / npix if subtract_mean else 0.0
        scale = 1.0
        if normalize:
            var = squares / npix - mean * mean
            if var > 0:
                scale = 1.0 / np.sqrt(var)
        m32 = np.float32(mean)
        s32 = np.float32(scale)
        for r in range(src.shape[1]):
            for c in range(src.shape[2]):
                out[i, r, c] = (src[i, r, c] - m32) * s32 * mask[r, c]


def fourier_transform(images: NDArray[np.float32], pad: int) -> NDArray[np.complex64]:
    """Unnormalised 2D FFT of each image, zero-padded to ``M = pad * N``.

    Parameters
    ----------
    images : ndarray, shape (n, N, N), float32
        Conditioned images.  Zero padding goes after the last row/column (the
        placement only changes phases).
    pad : int
        Padding factor >= 1.

    Returns
    -------
    ndarray, shape (n, M, M//2 + 1), complex64
        rfft2 half-plane layout: DC at ``[0, 0]``, row = ``ky`` (wrapping),
        column = ``kx >= 0``.
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    n = images.shape[-1]
    m = pad * n
    plan = fft.padded_rfft2(n, m, expected=len(images))
    out = np.empty((len(images), m, m // 2 + 1), np.complex64)
    for start in range(0, len(images), plan.batch):
        k = min(plan.batch, len(images) - start)
        plan.input[:k] = images[start:start + k]
        out[start:start + k] = plan.execute(k)[:k]
    return out


def spectra_half(images: NDArray[np.float32], pad: int, quantity: Quantity) -> NDArray[np.float32]:
    """``|F|^2`` or ``|F|`` of each image (see :func:`fourier_transform`).

    Parameters
    ----------
    images : ndarray, shape (n, N, N), float32
        Conditioned images.
    pad : int
        Padding factor >= 1.
    quantity : {"power", "amplitude"}

    Returns
    -------
    ndarray, shape (n, M, M//2 + 1), float32
        Half-plane layout of :func:`fourier_transform`.
    """
    a = np.abs(fourier_transform(images, pad))
    return a * a if quantity == "power" else a


def half_to_full(half: NDArray[np.floating]) -> NDArray[np.float32]:
    """Expand centrosymmetric half-plane spectra to centred full planes.

    Parameters
    ----------
    half : ndarray, shape (..., M, M//2 + 1)
        rfft2 layout (see :func:`spectra_half`), real and even: ``P(-k) = P(k)``.

    Returns
    -------
    ndarray, shape (..., M, M), float32
        DC at ``(M//2, M//2)``; columns are ``kx``, rows ``ky``.
    """
    m = half.shape[-2]
    h = m // 2 + 1
    full = np.empty(half.shape[:-1] + (m,), dtype=np.float32)
    full[..., :h] = half
    neg_rows = (-np.arange(m)) % m
    # kx in [M//2 + 1, M - 1] (negative frequencies): P(ky, kx) = P(-ky, M - kx)
    full[..., h:] = half[..., neg_rows, :][..., m - np.arange(h, m)]
    return np.fft.fftshift(full, axes=(-2, -1))


def detector_line_weights(size: int, halfwidth: int) -> NDArray[np.float32]:
    """Weights that blank the ``kx = 0`` and ``ky = 0`` lines of a centred plane.

    Parameters
    ----------
    size : int
        Plane size ``M`` (DC at ``M//2``).
    halfwidth : int
        Pixels with ``|kx| <= halfwidth`` or ``|ky| <= halfwidth`` get 0.

    Returns
    -------
    ndarray, shape (M, M), float32
        1 elsewhere.
    """
    k = np.abs(np.arange(size) - size // 2) > halfwidth
    return (k[:, None] & k[None, :]).astype(np.float32)


@njit(parallel=True, cache=True, nogil=True)
def rotate_bins(sums, used, cos_a, sin_a, counts, halfwidth, partial, camera
                 ):  # pragma: no cover - numba
    """Rotate the half-plane bin sums ``sums[used]`` by their angles about DC and add them up.

    Per bin and output pixel this is exactly
    :func:`~csplugin.engines.transform.align_images` ``(..., interpolation="linear")`` of
    the centred full plane (:func:`half_to_full`), rounded to float32 and added in float64.
    ``partial`` ``(T, P, M, M)`` float64 (zeros) gets one partial sum per task ``t`` (bins
    ``t, t + T, ...``): ``[t, 0]`` the rotated spectra and, with ``halfwidth >= 0`` (``P =
    3``), ``[t, 1]`` the rotated line-masked spectra and ``[t, 2]`` the rotated bin count
    times the line mask. ``camera`` ``(T, M, M//2 + 1)`` gets the unrotated sums. Each task
    expands one bin at a time into its own full plane (in cache while it is rotated).
    """
    m = sums.shape[1]
    half = sums.shape[2]
    centre = m // 2
    lines = halfwidth >= 0
    stride = m + 1
    # the line mask on the zero-bordered full plane (RELION's padding: 0 beyond the edge)
    mask = np.zeros(stride * stride, dtype=np.float32)
    for r in range(m):
        for c in range(m):
            if abs(c - centre) > halfwidth and abs(r - centre) > halfwidth:
                mask[r * stride + c] = 1.0
    tasks = partial.shape[0]
    for t in prange(tasks):
        mine = used[t::tasks]
        my_cos = cos_a[t::tasks]
        my_sin = sin_a[t::tasks]
        my_counts = counts[t::tasks]
        out = partial[t]
        cam = camera[t]
        group = np.zeros((_GROUP, stride * stride), dtype=np.float32)
        rows = np.zeros((3, m), dtype=np.float64)
        inside = np.empty(m, dtype=np.bool_)
        clear = np.empty(m, dtype=np.bool_)
        base = np.empty(m, dtype=np.uint64)
        fu = np.empty(m)
        fv = np.empty(m)
        for g0 in range(0, mine.shape[0], _GROUP):
            size = min(_GROUP, mine.shape[0] - g0)
            for g in range(size):  # expand the group's bins (they stay in cache while used)
                b = mine[g0 + g]
                for r in range(m):
                    src = sums[b, r]
                    for c in range(half):
                        cam[r, c] += src[c]
                _expand(sums[b], group[g], m, half, centre, stride)
            for i in range(m):  # each output row: every bin of the group, then added once
                rows[:] = 0.0
                for g in range(size):
                    _rotate_row(group[g], mask, clear, my_cos[g0 + g], my_sin[g0 + g],
                                my_counts[g0 + g], i, m, stride, halfwidth, rows, inside, base,
                                fu, fv)
                for j in range(m):
                    out[0, i, j] += rows[0, j]
                if lines:
                    for j in range(m):
                        out[1, i, j] += rows[1, j]
                        out[2, i, j] += rows[2, j]


@njit(cache=True, inline="always")
def _rotate_row(full, mask, clear, cs, sn, n, i, m, stride, halfwidth, rows, inside, base, fu,
                fv):  # pragma: no cover - numba
    """Add output row ``i`` of the flat zero-bordered plane ``full`` rotated (exactly
    :func:`~csplugin.engines.transform.align_images` linear, rounded to float32) into
    ``rows[0]``; with ``lines`` the line-masked plane into ``rows[1]`` and ``n`` times the
    rotated line mask into ``rows[2]`` (where ``clear``, away from the lines and the border,
    these are the plain value and ``n``: not computed again). ``inside``, ``base``, ``fu``,
    ``fv``: scratch. Pixels go ``_W`` at a time through :func:`_bilinear8` (the same
    operations per pixel, so the same bits), the masked ones near the lines and the last
    ``m % _W`` one by one."""
    _source_points(i, cs, sn, m, stride, halfwidth, inside, base, fu, fv, clear)
    n32 = np.float32(n)
    ustride = np.uint64(stride)
    lines = halfwidth >= 0
    vectors = m - m % _W
    for j0 in range(0, vectors, _W):
        need = _bilinear8(full, clear, base, fu, fv, inside, rows, j0, n32, ustride, lines)
        if need:
            for k in range(_W):
                if (need >> k) & 1:
                    _masked_pixel(full, mask, n, j0 + k, stride, rows, base, fu, fv)
    for j in range(vectors, m):
        if not inside[j]:
            continue
        wx, wy, p = fu[j], fv[j], base[j]
        val = (1.0 - wy) * (1.0 - wx) * full[p]
        val += (1.0 - wy) * wx * full[p + np.uint64(1)]
        val += wy * (1.0 - wx) * full[p + ustride]
        val += wy * wx * full[p + ustride + np.uint64(1)]
        v32 = np.float32(val)
        rows[0, j] += v32
        if not lines:
            continue
        if clear[j]:
            rows[1, j] += v32
            rows[2, j] += n32
        else:
            _masked_pixel(full, mask, n, j, stride, rows, base, fu, fv)


@njit(cache=True, inline="always")
def _source_points(i, c, s, n, stride, halfwidth, inside, base, fu, fv, clear
                   ):  # pragma: no cover - numba
    """:func:`~csplugin.engines.transform._source_row` (the same arithmetic, so the same
    bits) of output row ``i`` rotated about the centre of the ``(n + 1)``-strided plane,
    and ``clear``: the 4 neighbours ``(iv, iu) .. (iv + 1, iu + 1)`` lie in the plane and
    more than ``halfwidth`` from the centre lines (the line mask is 1 on all of them)."""
    h = n // 2
    hi = n - 1 + _EPS
    y = i - h
    u0 = s * y - 0.0 + h
    v0 = c * y - 0.0 + h
    for j in range(n):
        x = j - h
        u = c * x + u0
        v = -s * x + v0
        inside[j] = (u >= -_EPS) & (u <= hi) & (v >= -_EPS) & (v <= hi)
        iu = int(min(max(u, 0.0), n - 1.0))
        iv = int(min(max(v, 0.0), n - 1.0))
        fu[j] = u - iu
        fv[j] = v - iv
        base[j] = iu + iv * stride
        clear[j] = ((iu + 1 < n) & (iv + 1 < n) & (abs(iu - h) > halfwidth)
                    & (abs(iu + 1 - h) > halfwidth) & (abs(iv - h) > halfwidth)
                    & (abs(iv + 1 - h) > halfwidth))


@njit(cache=True, inline="always")
def _masked_pixel(full, mask, n, j, stride, rows, base, fu, fv):  # pragma: no cover - numba
    """Add pixel ``j`` of the line-masked plane into ``rows[1]`` and of ``n`` times the line
    mask into ``rows[2]`` (bilinear, as :func:`_rotate_row`)."""
    right, down = np.uint64(1), np.uint64(stride)
    wx, wy, p = fu[j], fv[j], base[j]
    w00 = (1.0 - wy) * (1.0 - wx)
    w01 = (1.0 - wy) * wx
    w10 = wy * (1.0 - wx)
    w11 = wy * wx
    l00 = mask[p]
    l01 = mask[p + right]
    l10 = mask[p + down]
    l11 = mask[p + down + right]
    val = w00 * (full[p] * l00)
    val += w01 * (full[p + right] * l01)
    val += w10 * (full[p + down] * l10)
    val += w11 * (full[p + down + right] * l11)
    rows[1, j] += np.float32(val)
    val = w00 * (n * l00)
    val += w01 * (n * l01)
    val += w10 * (n * l10)
    val += w11 * (n * l11)
    rows[2, j] += np.float32(val)


@intrinsic
def _bilinear8(typingctx, full, clear, base, fu, fv, inside, rows, j, n32, stride, lines):
    """Bilinear values of the ``_W`` output pixels ``j .. j + _W - 1`` of a row, in vectors.

    Per pixel exactly the scalar sum of :func:`_rotate_row`: float64 weights ``(1 - fv)(1 -
    fu)``, ``(1 - fv) fu``, ``fv (1 - fu)``, ``fv fu`` times the four float32 neighbours of
    ``full`` at ``base``, ``base + 1``, ``base + stride``, ``base + stride + 1`` (gathers),
    multiplied and added in that order (no fused multiply-add), rounded to float32. Where
    ``inside`` it is added to ``rows[0]``; with ``lines`` also, where ``clear`` (per pixel), to
    ``rows[1]``, and ``n32`` to ``rows[2]``. Returns the bit mask (lane ``k`` = bit ``k``)
    of the pixels inside and not clear, whose masked sums the caller adds (0 without
    ``lines``).
    """
    f32, f64, u64 = types.float32, types.float64, types.uint64
    b1 = types.Array(types.boolean, 1, "C")
    if not (full == types.Array(f32, 1, "C") and clear == b1 and inside == b1
            and base == types.Array(u64, 1, "C") and fu == types.Array(f64, 1, "C")
            and fv == fu and rows == types.Array(f64, 2, "C") and isinstance(j, types.Integer)
            and n32 == f32 and stride == u64 and lines == types.boolean):
        return None  # numba reports the mismatch as a typing error
    sig = types.uint64(full, clear, base, fu, fv, inside, rows, types.int64, n32, stride, lines)

    def codegen(context, builder, signature, args):
        full_v, clear_v, base_v, fu_v, fv_v, inside_v, rows_v, j_v, n_v, stride_v, lines_v = args
        sigargs = signature.args

        def data(k, value):
            return context.make_array(sigargs[k])(context, builder, value).data

        def vector(element):
            return ir.VectorType(element, _W)

        def splat(x, element):
            v = builder.insert_element(ir.Constant(vector(element), None), x, _I32(0))
            return builder.shuffle_vector(v, v, ir.Constant(vector(_I32), [0] * _W))

        def load(pointer, at, element, align):
            at = builder.bitcast(builder.gep(pointer, [at]), vector(element).as_pointer())
            return builder.load(at, align=align, typ=vector(element))

        def store(value, pointer, at):
            builder.store(value, builder.bitcast(builder.gep(pointer, [at]),
                                                 vector(_F64).as_pointer()), align=8)

        def gather(pointer, offsets, element, name):
            address = builder.add(splat(builder.ptrtoint(pointer, _I64), _I64), offsets)
            pointers = builder.inttoptr(address, vector(element.as_pointer()))
            fnty = ir.FunctionType(vector(element), [pointers.type, _I32, vector(_I1),
                                                     vector(element)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            everywhere = ir.Constant(vector(_I1), [1] * _W)
            return builder.call(fn, [pointers, _I32(1), everywhere,
                                     ir.Constant(vector(element), None)])

        plane = data(0, full_v)
        bytes_at = builder.shl(load(data(2, base_v), j_v, _I64, 8), splat(_I64(2), _I64))
        step = builder.shl(stride_v, _I64(2))
        f = []
        for at in (bytes_at, builder.add(bytes_at, splat(step, _I64))):  # 2 neighbours each
            pair = gather(plane, at, _I64, "llvm.masked.gather.v8i64.v8p0")
            pair = builder.bitcast(pair, ir.VectorType(_F32, 2 * _W))
            for lane in (0, 1):
                half = builder.shuffle_vector(pair, pair, ir.Constant(
                    vector(_I32), list(range(lane, 2 * _W, 2))))
                f.append(builder.fpext(half, vector(_F64)))
        wx = load(data(3, fu_v), j_v, _F64, 8)
        wy = load(data(4, fv_v), j_v, _F64, 8)
        one = ir.Constant(vector(_F64), [1.0] * _W)
        ux, uy = builder.fsub(one, wx), builder.fsub(one, wy)
        w = [builder.fmul(uy, ux), builder.fmul(uy, wx), builder.fmul(wy, ux),
             builder.fmul(wy, wx)]
        val = builder.fmul(w[0], f[0])
        for k in (1, 2, 3):
            val = builder.fadd(val, builder.fmul(w[k], f[k]))
        value = builder.fpext(builder.fptrunc(val, vector(_F32)), vector(_F64))
        zero8 = ir.Constant(vector(_I8), [0] * _W)
        ins = builder.icmp_unsigned("!=", load(data(5, inside_v), j_v, _I8, 1), zero8)
        rows = data(6, rows_v)
        ncols = builder.extract_value(context.make_array(sigargs[6])(
            context, builder, rows_v).shape, 1)

        def add_where(where, at, addend):
            old = load(rows, at, _F64, 8)
            store(builder.select(where, builder.fadd(old, addend), old), rows, at)

        add_where(ins, j_v, value)
        need = cgutils.alloca_once_value(builder, _I64(0))
        with builder.if_then(builder.trunc(lines_v, _I1) if lines_v.type != _I1 else lines_v):
            clr = builder.icmp_unsigned("!=", load(data(1, clear_v), j_v, _I8, 1), zero8)
            at = builder.add(j_v, ncols)
            add_where(builder.and_(ins, clr), at, value)
            n64 = splat(builder.fpext(n_v, _F64), _F64)
            add_where(builder.and_(ins, clr), builder.add(at, ncols), n64)
            masked = builder.and_(ins, builder.not_(clr))
            builder.store(builder.zext(builder.bitcast(masked, _I8), _I64), need)
        return builder.load(need)

    return sig, codegen


@njit(cache=True, inline="always")
def _expand(half_plane, full, m, half, centre, stride):  # pragma: no cover - numba
    """Centred full plane of a half plane (as :func:`half_to_full`) into the first ``m``
    rows and columns of the flat ``(m + 1, m + 1)`` plane ``full`` (the border stays 0)."""
    low = 2 * centre + 1 - m  # even m: column 0 is kx = -M/2, stored as +M/2
    for r in range(m):
        r0 = r - centre
        if r0 < 0:
            r0 += m
        r1 = m - r0
        if r1 == m:
            r1 = 0
        row = full[r * stride:r * stride + m]
        a = half_plane[r0]
        bneg = half_plane[r1]
        for c in range(low):
            row[c] = a[c - centre + m]
        for c in range(low, centre):  # kx < 0: P(ky, kx) = P(-ky, -kx)
            row[c] = bneg[centre - c]
        for c in range(centre, m):
            row[c] = a[c - centre]
