"""Layer lines of an averaged helical power spectrum (pure engine, no file I/O).

Input layout (as :mod:`csplugin.engines.power_spectrum` writes it with ``--axis vertical``):
a centred full plane ``(M, M)``, DC at ``(M//2, M//2)``, the helical axis **vertical**, so a
layer line is a row; pixel ``(row, col)`` is the frequency
``(kx, ky) = (col - M//2, row - M//2) / (M · voxel)`` 1/Å. ``voxel`` is the header voxel size
that puts Nyquist at the plane's edge (the particle pixel size for a padded spectrum,
``M = pad · N``). ``Z = |ky|`` is the layer-line height, ``R = |kx|`` the radial position.

Method
------
1. **Fold**: the spectrum is centrosymmetric and, for a helix seen side-on, on average
   mirror-symmetric about the meridian, so the four quadrants are averaged into ``Q[z, r]``,
   ``z, r = 0 .. M//2 - 1`` pixels.
2. **Whiten**: ``E = (Q - B(ρ)) / σ(ρ)`` with ``B`` the median and ``σ`` the scaled median
   absolute deviation of the pixels of each ring ``ρ = round(|k|)`` (rings merged near DC so
   each holds ≥ 24 pixels). Layer lines cover a small part of every ring, so both statistics
   describe the diffuse background and its noise, whatever the radial fall-off or the
   quantity (power or amplitude).
3. **Smooth** ``E`` with a 3 x 3 box (lines are ~2 padded pixels wide in ``z``, Bessel maxima
   several pixels wide in ``r``) and re-whiten ring by ring: ``T`` is in units of the noise
   sigma of the smoothed map.
4. **Rows**: the row score ``max_r T[z, r]``; a line is a local maximum over ``±2`` rows that
   reaches ``min_strength``, is not a side lobe of a line within 8 rows (which would be > 15x
   stronger at the same ``r``) and lies above ``min_height``.
5. **Per line**: the innermost local maximum along the row reaching
   ``max(0.5 min_strength, 0.5 · row max)`` is the first maximum (``peak_radius``, parabola-
   refined); ``meridional`` when it is within 1.5 pixels of the meridian (noise moves a
   reflection on the meridian by up to about a pixel of the padded grid); the height is
   refined by a parabola through the log of the ``r``-smoothed profile at that radius around
   its own peak row (within 2 rows of the score's).
6. **Half-set agreement**: the Pearson correlation of the two halves' whitened,
   ``r``-smoothed rows (linearly interpolated at the line's height) over all radii inside the
   resolution limit. Independent noise gives ~0 (s.d. about ``sqrt(pad / (M/2))``); a real
   line gives the same Bessel profile in both halves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

__all__ = ["LayerLine", "detect_layer_lines", "fold_spectrum", "layer_line_agreement",
           "whiten_folded"]

_MIN_RING_PIXELS = 48
_SIDE_LOBE_ROWS = 8
_SIDE_LOBE_RATIO = 15.0
_MAD_SCALE = 1.4826


#: A first maximum this close to the meridian (pixels of the spectrum) is a meridional
#: reflection (Bessel order 0).
_MERIDIAN_PX = 1.5

@dataclass(frozen=True)
class LayerLine:
    """One detected layer line.

    Attributes
    ----------
    height
        ``Z``, 1/Å, >= 0.
    peak_radius
        ``|R|`` of the first (innermost) maximum on the line, 1/Å.
    strength
        Peak height above the local background in units of the background's noise sigma
        (of the 3 x 3-smoothed whitened spectrum).
    half_agreement
        Correlation of the two half-set spectra along this line (NaN without halves).
    meridional
        A meridional reflection (first maximum at ``R ≈ 0``).
    """

    height: float
    peak_radius: float
    strength: float
    half_agreement: float
    meridional: bool


def fold_spectrum(spectrum: ArrayLike) -> NDArray[np.float64]:
    """Average the four quadrants of a centred spectrum.

    Parameters
    ----------
    spectrum : array_like, shape (M, M)
        DC at ``(M//2, M//2)``.

    Returns
    -------
    ndarray, shape (M//2, M//2), float64
        ``Q[z, r]`` = mean of the pixels at ``(±z, ±r)`` from DC, ``z, r = 0 .. M//2 - 1``.
    """
    s = np.asarray(spectrum, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 8:
        raise ValueError(f"need a square spectrum of at least 8 x 8, got {s.shape}")
    c = s.shape[0] // 2
    d = np.arange(c)
    up, down = c + d, c - d
    return 0.25 * (s[np.ix_(up, up)] + s[np.ix_(down, up)] + s[np.ix_(up, down)]
                   + s[np.ix_(down, down)])


def _ring_groups(size: int) -> tuple[NDArray[np.int64], int]:
    """Ring index ``(size, size)`` of each folded pixel (-1 outside the Nyquist circle),
    rings merged from DC outwards until each holds ``_MIN_RING_PIXELS`` pixels."""
    z, r = np.mgrid[0:size, 0:size]
    ring = np.rint(np.hypot(z, r)).astype(np.int64)
    ring[ring >= size] = -1
    counts = np.bincount(ring[ring >= 0], minlength=size)
    group = np.empty(size, np.int64)
    g, filled = 0, 0
    for k in range(size):
        group[k] = g
        filled += counts[k]
        if filled >= _MIN_RING_PIXELS:
            g, filled = g + 1, 0
    if filled and g > 0:  # a short last group joins the previous one
        group[group == g] = g - 1
    n_groups = int(group.max()) + 1
    return np.where(ring >= 0, group[np.maximum(ring, 0)], -1), n_groups


def _group_quantile(values: NDArray[np.float64], groups: NDArray[np.int64], n_groups: int,
                    qs: tuple[float, ...]) -> NDArray[np.float64]:
    """Quantiles ``qs`` ``(len(qs), n_groups)`` of ``values`` per group (``groups >= 0``),
    each the order statistic at ``floor(q (count - 1))`` (found by partial sorts)."""
    out = np.zeros((len(qs), n_groups))
    flat = values.ravel()
    for g, members in enumerate(_group_members(groups, n_groups)):
        if members.size:
            kth = [int(np.floor(q * (members.size - 1))) for q in qs]
            out[:, g] = np.partition(flat[members], kth)[kth]
    return out


def _group_members(groups: NDArray[np.int64], n_groups: int) -> list[NDArray[np.int64]]:
    """Flat indices of each group's pixels (cached per grid: the rings of a size never change)."""
    key = (groups.shape, n_groups)
    if key not in _MEMBERS:
        flat = groups.ravel()
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(n_groups + 1))
        _MEMBERS[key] = [order[bounds[g]:bounds[g + 1]] for g in range(n_groups)]
    return _MEMBERS[key]


_MEMBERS: dict[tuple[tuple[int, ...], int], list[NDArray[np.int64]]] = {}


def _whiten(q: NDArray[np.float64], groups: NDArray[np.int64], n_groups: int
            ) -> NDArray[np.float64]:
    """``(q - background) / sigma`` ring group by ring group; 0 outside the circle.

    Layer lines only add to the diffuse background, and at low resolution they can cover
    half of a ring, so both statistics come from the ring's lower tail: for Gaussian noise
    ``sigma = (q25 - q10) / 0.6071`` and ``background = q25 + 0.6745 sigma`` (the median).
    """
    inside = groups >= 0
    q10, q25 = _group_quantile(q, groups, n_groups, (0.10, 0.25))
    sigma = (q25 - q10) / 0.6071
    background = q25 + 0.6745 * sigma
    positive = sigma[sigma > 0]
    floor = positive.min() if positive.size else 1.0
    sigma = np.where(sigma > 0, sigma, floor)
    idx = np.maximum(groups, 0)
    return np.where(inside, (q - background[idx]) / sigma[idx], 0.0)


def whiten_folded(spectrum: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Folded, whitened spectrum and its smoothed, re-whitened version.

    Parameters
    ----------
    spectrum : array_like, shape (M, M)
        Centred spectrum, axis vertical.

    Returns
    -------
    (E_r, T) : ndarrays, shape (M//2, M//2)
        ``E_r``: the whitened folded spectrum smoothed over 3 pixels along ``r`` only (for
        heights and half-set correlations); ``T``: smoothed 3 x 3 and re-whitened (strength).
        Both are 0 outside the Nyquist circle.
    """
    q = fold_spectrum(spectrum)
    groups, n_groups = _ring_groups(q.shape[0])
    inside = groups >= 0
    e = _meridian_scaled(_whiten(q, groups, n_groups), inside)
    e_r = ndimage.uniform_filter1d(e, 3, axis=1, mode="mirror")
    smooth = ndimage.uniform_filter1d(e_r, 3, axis=0, mode="mirror")
    t = _meridian_scaled(_whiten(smooth, groups, n_groups), inside)
    # one global scale from the core of the distribution (the per-ring lower-tail estimate
    # runs a little narrow where the noise is not quite Gaussian)
    core = t[inside & (np.arange(t.shape[1])[None, :] >= 2)]
    mad = _MAD_SCALE * np.median(np.abs(core - np.median(core))) if core.size else 1.0
    return np.where(inside, e_r, 0.0), t / max(mad, 1e-12)


def _meridian_scaled(e: NDArray[np.float64], inside: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Rescale the meridian column ``r = 0`` and the equator row ``z = 0`` to unit noise:
    folding averages only two distinct pixels there instead of four, so their noise is
    ~sqrt(2) larger. The scale is the lower-tail sigma of the column (row) itself."""
    out = e.copy()
    for view, keep in ((out[:, 0], inside[:, 0]), (out[0, :], inside[0, :])):
        v = view[keep]
        if v.size >= 8:
            q10, q25, med = np.quantile(v, [0.10, 0.25, 0.5])
            sigma = max((q25 - q10) / 0.6071, 1e-12)
            view[keep] = (v - med) / sigma
    return out


def _parabola(y_minus: float, y0: float, y_plus: float) -> float:
    """Vertex offset in (-0.5, 0.5) of the parabola through three samples (0 if flat)."""
    denom = y_minus - 2 * y0 + y_plus
    if denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (y_minus - y_plus) / denom, -0.5, 0.5))


def _log_parabola(y_minus: float, y0: float, y_plus: float) -> float:
    """Vertex offset through the logs (exact for a Gaussian peak) when all are positive."""
    if min(y_minus, y0, y_plus) > 0:
        return _parabola(np.log(y_minus), np.log(y0), np.log(y_plus))
    return _parabola(y_minus, y0, y_plus)


def detect_layer_lines(spectrum: np.ndarray, voxel_size: float, *,
                       half1: np.ndarray | None = None, half2: np.ndarray | None = None,
                       min_strength: float = 6.0, max_resolution: float | None = None,
                       min_height: float | None = None) -> list[LayerLine]:
    """Detect layer lines (rows) in an averaged spectrum with the helical axis vertical.

    Parameters
    ----------
    spectrum : ndarray, shape (M, M)
        Centred averaged power (or amplitude) spectrum, DC at ``(M//2, M//2)``, axis vertical.
    voxel_size : float
        Header voxel size (Å) such that the edge is Nyquist: frequency step
        ``1/(M · voxel_size)`` 1/Å.
    half1, half2 : ndarray, shape (M, M), optional
        Spectra of two independent halves of the particles (e.g. split by filament); then
        each line's ``half_agreement`` is filled (:func:`layer_line_agreement`).
    min_strength : float
        Minimum strength (noise sigmas of the smoothed whitened spectrum). Pure noise rarely
        exceeds ~5 anywhere in a 256² spectrum.
    max_resolution : float, optional
        Only frequencies up to ``1/max_resolution`` 1/Å (heights and radii) are used.
    min_height : float, optional
        Smallest height reported, 1/Å; default 2 pixels, ``2/(M · voxel_size)`` (the equator
        itself is never reported).

    Returns
    -------
    list of LayerLine
        Sorted by height.
    """
    s = np.asarray(spectrum, dtype=np.float64)
    m = s.shape[0]
    step = 1.0 / (m * voxel_size)
    e_r, t = whiten_folded(s)
    size = t.shape[0]
    z, r = np.mgrid[0:size, 0:size]
    limit = size - 1.0
    if max_resolution is not None:
        limit = min(limit, 1.0 / (max_resolution * step))
    inside = np.hypot(z, r) <= limit
    t = np.where(inside, t, -np.inf)
    score = t.max(axis=1)
    z_min = max(2, int(np.ceil((min_height if min_height is not None else 2 * step) / step)))
    found: list[tuple[float, float, float, bool]] = []
    for row in range(z_min, min(size, int(limit) + 1)):
        if not np.isfinite(score[row]) or score[row] < min_strength:
            continue
        lo, hi = max(0, row - 2), min(size, row + 3)
        if score[row] < score[lo:hi].max() or (score[lo:row] == score[row]).any():
            continue  # not the (first) maximum of its neighbourhood
        line = t[row]
        valid = np.isfinite(line)
        col_max = int(np.argmax(np.where(valid, line, -np.inf)))
        if _is_side_lobe(e_r, row, col_max):
            continue
        threshold = max(0.5 * min_strength, 0.5 * score[row])
        col = _first_maximum(line, valid, threshold)
        if col is None:
            col = col_max
        if col == 0:
            radius = 0.0
        elif col + 1 < size and valid[col + 1]:
            radius = col + _parabola(line[col - 1], line[col], line[col + 1])
        else:
            radius = float(col)
        # the z-smoothed score can be flat-topped: take the peak row of the unsmoothed profile
        lo, hi = max(1, row - 2), min(size - 1, row + 3)
        peak = lo + int(np.argmax(e_r[lo:hi, col])) if hi > lo else row
        height = float(peak)
        if 1 <= peak < size - 1:
            prof = e_r[peak - 1:peak + 2, col]
            height = peak + _log_parabola(prof[0], prof[1], prof[2])
        found.append((height * step, max(radius, 0.0) * step, float(score[row]),
                      radius <= _MERIDIAN_PX))
    heights = [f[0] for f in found]
    if half1 is not None and half2 is not None and found:
        agreement = layer_line_agreement(half1, half2, voxel_size, heights,
                                         max_resolution=max_resolution)
    else:
        agreement = np.full(len(found), np.nan)
    return [LayerLine(h, pr, st, float(a), mer)
            for (h, pr, st, mer), a in zip(found, agreement)]


def _is_side_lobe(e_r: NDArray[np.float64], row: int, col: int) -> bool:
    """Whether a much stronger line within ``_SIDE_LOBE_ROWS`` rows explains this one as
    its side lobe along ``z`` (compared at the same radius; the equator row included)."""
    lo, hi = max(0, row - _SIDE_LOBE_ROWS), min(e_r.shape[0], row + _SIDE_LOBE_ROWS + 1)
    here = max(e_r[row, col], 1e-12)
    others = np.concatenate([e_r[lo:max(lo, row - 1), col], e_r[row + 2:hi, col]])
    return bool(others.size and others.max() > _SIDE_LOBE_RATIO * here)


def _first_maximum(line: NDArray[np.float64], valid: NDArray[np.bool_],
                   threshold: float) -> int | None:
    """Innermost local maximum (mirror-symmetric about r = 0) reaching ``threshold``."""
    n = len(line)
    for col in range(n):
        if not valid[col]:
            break
        v = line[col]
        if v < threshold:
            continue
        left = line[col - 1] if col > 0 else line[1]
        right = line[col + 1] if col + 1 < n and valid[col + 1] else -np.inf
        if v >= left and v >= right:
            return col
    return None


def layer_line_agreement(half1: np.ndarray, half2: np.ndarray, voxel_size: float,
                         heights: Sequence[float] | np.ndarray, *,
                         max_resolution: float | None = None) -> np.ndarray:
    """Correlation of two half-set spectra along given layer lines.

    Parameters
    ----------
    half1, half2 : ndarray, shape (M, M)
        Centred spectra of two independent halves, axis vertical.
    voxel_size : float
        Header voxel size (Å), Nyquist at the edge.
    heights : sequence of float, length L
        Line heights, 1/Å.
    max_resolution : float, optional
        Use radii up to ``1/max_resolution`` 1/Å only.

    Returns
    -------
    ndarray, shape (L,), float64
        Pearson correlation in [-1, 1] of the halves' whitened, ``r``-smoothed rows (linearly
        interpolated at each height) over the radii inside the Nyquist circle and the
        resolution limit; NaN where fewer than 4 radii remain.
    """
    a = np.asarray(half1, dtype=np.float64)
    b = np.asarray(half2, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"half spectra differ in shape: {a.shape} vs {b.shape}")
    step = 1.0 / (a.shape[0] * voxel_size)
    ea, _ = whiten_folded(a)
    eb, _ = whiten_folded(b)
    size = ea.shape[0]
    limit = size - 1.0
    if max_resolution is not None:
        limit = min(limit, 1.0 / (max_resolution * step))
    out = np.full(len(heights), np.nan)
    r = np.arange(size)
    for i, h in enumerate(np.asarray(heights, dtype=np.float64)):
        zf = h / step
        z0 = int(np.floor(zf))
        if z0 < 0 or z0 + 1 >= size:
            continue
        w = zf - z0
        keep = np.hypot(z0 + 1, r) <= limit
        if keep.sum() < 4:
            continue
        pa = (1 - w) * ea[z0, keep] + w * ea[z0 + 1, keep]
        pb = (1 - w) * eb[z0, keep] + w * eb[z0 + 1, keep]
        pa, pb = pa - pa.mean(), pb - pb.mean()
        denom = np.sqrt((pa * pa).sum() * (pb * pb).sum())
        out[i] = float((pa * pb).sum() / denom) if denom > 0 else np.nan
    return out
