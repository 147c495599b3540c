r"""Helical symmetry candidates from layer lines (pure engine, no file I/O).

Selection rule
--------------
A helix with rise ``Δz`` (Å), twist ``Δφ`` (degrees per subunit) and cyclic symmetry ``Cn``
is invariant under the screw ``(Δφ, Δz)`` and the rotation ``360°/Cn`` about its axis. Its
Fourier transform is therefore confined to layer lines at heights

.. math::

    Z(n, m) = n \frac{Δφ}{360° Δz} + \frac{m}{Δz} = \frac{n}{P} + \frac{m}{Δz},
    \qquad n \in Cn\,\mathbb{Z},\ m \in \mathbb{Z},

(``P = 360° Δz / Δφ``, signed pitch of one start) and the line of Bessel order ``n`` carries
``J_n(2π r R)`` from density at radius ``r``, whose first maximum is at
``R_1 = j'_{|n|,1} / (2π r)`` (``j'_{n,1}``: first zero of ``J_n'``, ``scipy.special.
jnp_zeros``; ``R_1 = 0`` for ``n = 0``, a meridional reflection). The pairs ``(n, Z)`` form
a 2D lattice spanned by ``(Cn, Cn·t)`` and ``(0, u)`` with ``t = Δφ/(360 Δz)``, ``u = 1/Δz``.
Equivalences: ``Δφ → Δφ + k·360°/Cn`` gives the same lattice (twists are folded into
``(-180/Cn, 180/Cn]``), and ``Δφ → -Δφ`` with ``n → -n`` gives the same power spectrum
(hand), so one hand is reported, ``twist >= 0``.

Search
------
For every ``Cn <= max_csym``, two of the six strongest observed lines are assigned Bessel orders
allowed by their first-maximum radius and the radius range (``j'_{|n|,1}/(2π r_out) <= R
<= j'_{|n|,1}/(2π r_in)`` up to 1.5 samples; ``n = 0`` only for meridional lines), ``n``
multiple of ``Cn``, and small ``m`` (-1 .. 2); each assignment fixes ``(t, u)`` by a 2 x 2
solve (all assignments at once, vectorised). The 600 lattices matching the most line weight
(within twice the tolerance) go on: every line is matched to its nearest
allowed ``(n, m)`` (within ``z_tolerance``), ``(t, u)`` refined by weighted least squares on
the matched lines, and equal lattices merged.

Score
-----
With line weights ``w = sqrt(strength)`` (times the half-set agreement when known):
``score = Σ_matched w - Σ_unexplained w - miss_weight · median(w) · (number of predicted
lines of the observed region that are not seen)``. The observed region is heights up to the
highest line and first maxima (for ``r_out``) up to the 75th percentile of the observed peak
radii (high orders are weak, so only low-order lines are expected to show); per predicted
height only the lowest ``|n|`` counts. Dense lattices (tiny ``1/Δz``, many orders) explain
any set of lines but predict many unseen ones, so they drop.

What a power spectrum cannot decide (named in each candidate's ``note``): the hand; the
sign of ``n`` (and ``|n|`` beyond the radius prior); rise vs. pitch when no meridional
``1/Δz`` reflection is seen (then rises with the same pitch fit equally); ``Cn`` vs. an
n-start C1 re-indexing (a missing line may be weak rather than extinct).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import jnp_zeros

from csplugin.engines.layer_lines import LayerLine

__all__ = ["HelicalCandidate", "bessel_first_maximum", "estimate_helix_radius",
           "helix_radius_range", "index_helix", "predict_layer_lines"]

_SEED_LINES = 6
_M_SEED = np.arange(-1, 3)
_PRESELECT = 600  # seed lattices per Cn refined, by matched weight before refinement
_MAX_ORDER = 120
_PRUNE = 1500  # lattices per Cn kept for the missing-line count


@dataclass(frozen=True)
class HelicalCandidate:
    """A helical lattice that explains the observed layer lines.

    Attributes
    ----------
    rise
        Δz, Å.
    twist
        Δφ, degrees in ``[0, 180/csym]`` (one hand reported; ``-twist`` fits equally).
    csym
        Cyclic symmetry Cn.
    pitch
        ``360·rise/twist`` Å (inf for zero twist).
    score
        Ranking score (higher is better; see the module docstring).
    matched_lines
        Number of observed lines explained.
    note
        The ambiguities that apply (hand, Bessel order sign, rise/pitch, Cn/n-start).
    predicted
        ``(height 1/Å, Bessel order n, first-maximum radius 1/Å)`` of each predicted line
        within the resolution used (lowest ``|n|`` per height, radius for the middle of the
        radius range, first maximum inside Nyquist), by height.
    """

    rise: float
    twist: float
    csym: int
    pitch: float
    score: float
    matched_lines: int
    note: str
    predicted: tuple[tuple[float, int, float], ...]


@lru_cache(maxsize=1)
def _jprime_table() -> NDArray[np.float64]:
    """``(MAX_ORDER + 1,)`` first maximum ``x`` of ``J_n`` (``j'_{n,1}``; 0 for n = 0)."""
    return np.array([0.0] + [float(jnp_zeros(n, 1)[0]) for n in range(1, _MAX_ORDER + 1)])


def bessel_first_maximum(order: ArrayLike, radius: float) -> NDArray[np.float64]:
    """First-maximum radial position of Bessel order(s) ``n`` from density at ``radius`` Å.

    Returns
    -------
    ndarray, same shape as ``order``
        ``j'_{|n|,1} / (2π radius)`` 1/Å (0 for ``n = 0``).
    """
    n = np.minimum(np.abs(np.asarray(order, np.int64)), _MAX_ORDER)
    return _jprime_table()[n] / (2 * math.pi * radius)


def estimate_helix_radius(average: ArrayLike, pixel_size: float, *,
                          threshold: float = 0.2) -> float:
    """Outer radius of a filament from the width of its class average (axis vertical).

    The column profile (mean over rows) minus its median level outside the filament is
    taken; the outer radius is half the distance between the outermost columns where it
    exceeds ``threshold`` × its maximum, measured from the profile's centre of mass.

    Parameters
    ----------
    average : array_like, shape (N, N)
        Class average, helical axis vertical (along rows), protein bright.
    pixel_size : float
        Å/px.
    threshold : float
        Fraction of the profile maximum that defines the edge.

    Returns
    -------
    float
        Outer radius, Å. The subunit density lies roughly within ``[0.5, 1] ×`` this
        (:func:`helix_radius_range`).
    """
    img = np.asarray(average, dtype=np.float64)
    profile = img.mean(axis=0)
    n = len(profile)
    base = np.median(np.concatenate([profile[: n // 8], profile[-(n // 8):]]))
    p = np.maximum(profile - base, 0.0)
    if p.max() <= 0:
        raise ValueError("the class average has no positive contrast across the axis")
    x = np.arange(n, dtype=np.float64)
    centre = (p * x).sum() / p.sum()
    above = np.flatnonzero(p >= threshold * p.max())
    left, right = _edge(p, above[0], -1, threshold), _edge(p, above[-1], 1, threshold)
    return float(max(centre - left, right - centre) * pixel_size)


def _edge(p: NDArray[np.float64], i: int, direction: int, threshold: float) -> float:
    """Sub-pixel position where ``p`` falls through ``threshold · max`` next to index ``i``."""
    level = threshold * p.max()
    j = i + direction
    if j < 0 or j >= len(p) or p[i] == p[j]:
        return float(i)
    return float(i + direction * (p[i] - level) / (p[i] - p[j]))


def helix_radius_range(average: ArrayLike, pixel_size: float) -> tuple[float, float]:
    """``(0.5 r_out, r_out)`` Å from :func:`estimate_helix_radius`: the radius prior of
    :func:`index_helix`."""
    r_out = estimate_helix_radius(average, pixel_size)
    return 0.5 * r_out, r_out


def predict_layer_lines(rise: float, twist: float, csym: int, radius: float, max_height: float,
                        max_radius: float) -> tuple[tuple[float, int, float], ...]:
    """Layer lines of a helix up to a height, lowest ``|n|`` per height.

    Parameters
    ----------
    rise, twist, csym
        Δz (Å), Δφ (degrees), Cn.
    radius
        Radius (Å) used for the first-maximum positions.
    max_height, max_radius
        Heights ``0 < Z <= max_height`` and first maxima ``R_1 <= max_radius`` (1/Å).

    Returns
    -------
    tuple of (height 1/Å, n, first-maximum radius 1/Å)
        Sorted by height; lines whose heights agree to 1e-9 1/Å keep the lowest ``|n|``.
    """
    t, u = twist / (360.0 * rise), 1.0 / rise
    jp = _jprime_table()
    n_max = int(np.searchsorted(jp, 2 * math.pi * radius * max_radius, side="right"))
    n_max = min(n_max - (n_max % csym), _MAX_ORDER - _MAX_ORDER % csym)
    n = np.arange(-n_max, n_max + 1, csym)
    reach = abs(t) * n_max / u
    m = np.arange(math.floor(-reach) - 1, math.ceil(max_height / u + reach) + 2)
    z = n[:, None] * t + m[None, :] * u
    nn = np.broadcast_to(n[:, None], z.shape)
    keep = (z > 1e-9) & (z <= max_height)
    z, nn = z[keep], nn[keep]
    order = np.lexsort((np.abs(nn), np.round(z, 9)))
    z, nn = z[order], nn[order]
    first = np.concatenate([[True], np.diff(np.round(z, 9)) > 0])
    heights, orders = z[first], nn[first]
    return tuple(zip(heights.tolist(), orders.tolist(),
                     bessel_first_maximum(orders, radius).tolist()))


def index_helix(lines: Sequence[LayerLine], radius_range: tuple[float, float], *,
                nyquist: float, max_csym: int = 6, top: int = 50,
                rise_range: tuple[float, float] = (2.0, 80.0),
                sampling: float | None = None, z_tolerance: float | None = None,
                max_resolution: float | None = None,
                miss_weight: float = 0.5) -> list[HelicalCandidate]:
    """Rank helical lattices ``(rise, twist, Cn)`` that explain observed layer lines.

    Parameters
    ----------
    lines : sequence of LayerLine
        Observed lines (:func:`csplugin.engines.layer_lines.detect_layer_lines`).
    radius_range : (float, float)
        ``(r_in, r_out)`` Å bracketing the radius of the subunit density (e.g.
        :func:`helix_radius_range`); bounds the Bessel order of each line.
    nyquist : float
        Nyquist frequency of the spectrum, 1/Å (``1/(2 · voxel)``).
    max_csym : int
        Largest cyclic symmetry tried.
    top : int
        Number of candidates returned.
    rise_range : (float, float)
        Rises considered, Å.
    sampling : float, optional
        Frequency step of the spectrum ``1/(M · voxel)`` 1/Å; default ``nyquist / 128``
        (``M = 256``).
    z_tolerance : float, optional
        Largest height mismatch of a matched line, 1/Å; default ``0.75 · sampling``.
    max_resolution : float, optional
        Resolution (Å) the lines were detected to; predictions stop there (default Nyquist).
    miss_weight : float
        Penalty per predicted-but-unseen line, in units of the median line weight.

    Returns
    -------
    list of HelicalCandidate
        Best first, at most ``top``; empty with fewer than two lines.
    """
    r_in, r_out = sorted(float(r) for r in radius_range)
    if r_in <= 0:
        raise ValueError(f"radius_range must be positive, got {radius_range}")
    step = sampling if sampling is not None else nyquist / 128.0
    tol = z_tolerance if z_tolerance is not None else 0.75 * step
    z_max = nyquist if max_resolution is None else min(nyquist, 1.0 / max_resolution)
    obs = [ln for ln in lines if 0 < ln.height <= z_max]
    if len(obs) < 2:
        return []
    z = np.array([ln.height for ln in obs])
    rad = np.array([ln.peak_radius for ln in obs])
    mer = np.array([ln.meridional for ln in obs])
    w = np.sqrt(np.maximum([ln.strength for ln in obs], 0.0))
    agree = np.array([ln.half_agreement for ln in obs])
    w = np.where(np.isfinite(agree), w * np.clip(agree, 0.05, 1.0), w)
    w_ref = float(np.median(w))
    allowed = _allowed_orders(rad, mer, r_in, r_out, step)  # (L, K) |n|, -1 = none
    u_lo, u_hi = 1.0 / rise_range[1], 1.0 / rise_range[0]
    seeds = np.argsort(-w, kind="stable")[:_SEED_LINES]
    region = (z.max() + tol, float(np.percentile(rad, 75)) + 1.5 * step)
    results: list[tuple[float, float, int, float, int, bool]] = []
    for csym in range(1, max_csym + 1):
        signed = _signed_orders(allowed, csym)  # (L, K2) signed n, or a huge sentinel
        tu = _seed_lattices(z, signed, seeds, u_lo, u_hi)
        if not len(tu):
            continue
        if len(tu) > _PRESELECT:
            first = _matched_weight(z, w, signed, tu, 2 * tol)
            tu = tu[np.argpartition(-first, _PRESELECT)[:_PRESELECT]]
        tu = _refine(z, w, signed, tu, tol)
        tu = tu[(tu[:, 1] >= u_lo) & (tu[:, 1] <= u_hi)]
        if not len(tu):
            continue
        tu = _unique(tu, csym)
        matched_w, n_matched, meridian_seen = _match(z, w, signed, tu, tol)
        if len(tu) > _PRUNE:  # the missing-line count only for the best explanations
            best = np.argpartition(-matched_w, _PRUNE)[:_PRUNE]
            tu, matched_w = tu[best], matched_w[best]
            n_matched, meridian_seen = n_matched[best], meridian_seen[best]
        missing = _missing(tu, csym, z, tol, region, r_out)
        score = 2 * matched_w - w.sum() - miss_weight * w_ref * missing
        for (t, u), s, k, ms in zip(tu, score, n_matched, meridian_seen):
            results.append((float(s), float(t), csym, float(u), int(k), bool(ms)))
    results.sort(key=lambda x: -x[0])
    out: list[HelicalCandidate] = []
    r_mid = 0.5 * (r_in + r_out)
    seen_c1: set[tuple[int, int]] = set()
    for s, t, csym, u, k, meridian_seen in results:
        rise = 1.0 / u
        twist = 360.0 * t * rise
        key = (round(math.log(rise) / 0.002), round(twist / 0.1))
        if csym == 1:
            seen_c1.add(key)
        out.append(HelicalCandidate(
            rise=rise, twist=twist, csym=csym,
            pitch=math.inf if twist == 0 else 360.0 * rise / twist, score=s, matched_lines=k,
            note=_note(rise, csym, meridian_seen, z_max, key in seen_c1),
            predicted=predict_layer_lines(rise, twist, csym, r_mid, z_max, nyquist)))
        if len(out) >= top:
            break
    return out


def _allowed_orders(rad: NDArray[np.float64], mer: NDArray[np.bool_], r_in: float,
                    r_out: float, step: float) -> NDArray[np.int64]:
    """``(L, K)`` allowed ``|n|`` per line from its first-maximum radius (-1 padded)."""
    jp = _jprime_table()
    r_lo = jp / (2 * math.pi * r_out) - 1.5 * step
    r_hi = jp / (2 * math.pi * r_in) + 1.5 * step
    ok = (rad[:, None] >= r_lo[None, :]) & (rad[:, None] <= r_hi[None, :])
    ok[:, 0] = mer | (rad <= 1.5 * step)
    width = max(1, int(ok.sum(axis=1).max()))
    out = np.full((len(rad), width), -1, np.int64)
    for i, row in enumerate(ok):
        orders = np.flatnonzero(row)
        out[i, :len(orders)] = orders
    return out


_NONE = 10**6  # sentinel order: never matches


def _signed_orders(allowed: NDArray[np.int64], csym: int) -> NDArray[np.int64]:
    """``(L, K2)`` signed orders (multiples of ``csym``) per line; ``_NONE`` padded."""
    rows = []
    for a in allowed:
        a = a[(a >= 0) & (a % csym == 0)]
        rows.append(np.unique(np.concatenate([a, -a])))
    width = max(1, max(len(r) for r in rows))
    out = np.full((len(rows), width), _NONE, np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _seed_lattices(z: NDArray[np.float64], signed: NDArray[np.int64], seeds: NDArray[np.int64],
                   u_lo: float, u_hi: float) -> NDArray[np.float64]:
    """``(C, 2)`` lattices ``(t, u)`` from every order/m assignment of every seed pair."""
    out = []
    mm = _M_SEED
    for a_i, a in enumerate(seeds):
        na = signed[a][signed[a] != _NONE]
        na = na[na >= 0]  # hand: fix the sign of the first line's order
        for b in seeds[a_i + 1:]:
            nb = signed[b][signed[b] != _NONE]
            if not len(na) or not len(nb):
                continue
            n1, m1, n2, m2 = np.meshgrid(na, mm, nb, mm, indexing="ij")
            n1, m1, n2, m2 = n1.ravel(), m1.ravel(), n2.ravel(), m2.ravel()
            det = n1 * m2 - n2 * m1
            ok = det != 0
            n1, m1, n2, m2, det = n1[ok], m1[ok], n2[ok], m2[ok], det[ok]
            t = (z[a] * m2 - z[b] * m1) / det
            u = (n1 * z[b] - n2 * z[a]) / det
            keep = (u >= u_lo * 0.98) & (u <= u_hi * 1.02)
            out.append(np.stack([t[keep], u[keep]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2))


def _assign(z: NDArray[np.float64], signed: NDArray[np.int64], tu: NDArray[np.float64]
            ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Nearest allowed ``(n, m)`` of each line for each lattice: residual ``(C, L)``, n, m."""
    t, u = tu[:, 0, None, None], tu[:, 1, None, None]
    n = signed[None, :, :].astype(np.float64)
    m = np.rint((z[None, :, None] - n * t) / u)
    resid = np.abs(z[None, :, None] - n * t - m * u)
    resid = np.where(signed[None] == _NONE, np.inf, resid)
    best = np.argmin(resid, axis=2)  # (C, L)
    take = best[..., None]
    r = np.take_along_axis(resid, take, 2)[..., 0]
    nb = np.take_along_axis(np.broadcast_to(signed[None], resid.shape), take, 2)[..., 0]
    mb = np.take_along_axis(m, take, 2)[..., 0].astype(np.int64)
    return r, nb, mb


def _matched_weight(z: NDArray[np.float64], w: NDArray[np.float64],
                    signed: NDArray[np.int64], tu: NDArray[np.float64], tol: float,
                    chunk: int = 2048) -> NDArray[np.float64]:
    """Weight ``(C,)`` of the lines each lattice matches within ``tol`` (float32, chunked)."""
    n = np.where(signed == _NONE, 0, signed).astype(np.float32)[None]
    dead = (signed == _NONE)[None]
    zz = z.astype(np.float32)[None, :, None]
    out = np.empty(len(tu))
    for start in range(0, len(tu), chunk):
        t = tu[start:start + chunk, 0, None, None].astype(np.float32)
        u = tu[start:start + chunk, 1, None, None].astype(np.float32)
        x = (zz - n * t) / u
        resid = np.abs(x - np.rint(x)) * u
        resid[np.broadcast_to(dead, resid.shape)] = np.inf
        out[start:start + chunk] = (resid.min(axis=2) <= tol) @ w
    return out


def _refine(z: NDArray[np.float64], w: NDArray[np.float64], signed: NDArray[np.int64],
            tu: NDArray[np.float64], tol: float) -> NDArray[np.float64]:
    """Weighted least-squares ``(t, u)`` on the lines each lattice matches (2 rounds)."""
    for _ in range(2):
        r, n, m = _assign(z, signed, tu)
        wt = np.where(r <= tol, w[None, :], 0.0)
        n, m = n.astype(np.float64), m.astype(np.float64)
        a11, a12, a22 = (wt * n * n).sum(1), (wt * n * m).sum(1), (wt * m * m).sum(1)
        b1, b2 = (wt * n * z).sum(1), (wt * m * z).sum(1)
        det = a11 * a22 - a12 * a12
        ok = np.abs(det) > 1e-9 * np.maximum(a11 * a22, 1e-30)
        t_new = np.where(ok, (a22 * b1 - a12 * b2) / np.where(ok, det, 1.0), tu[:, 0])
        u_new = np.where(ok, (a11 * b2 - a12 * b1) / np.where(ok, det, 1.0), tu[:, 1])
        tu = np.stack([t_new, u_new], axis=1)
    return tu


def _unique(tu: NDArray[np.float64], csym: int) -> NDArray[np.float64]:
    """Canonical ``(t, u)`` (twist folded into [0, 180/Cn], one hand), duplicates merged."""
    t, u = tu[:, 0], tu[:, 1]
    period = u / csym  # twist + 360/Cn: t + u/Cn, same lattice
    t = np.mod(t + period / 2, period) - period / 2
    t = np.abs(t)
    key = np.stack([np.rint(np.log(u) / 0.002), np.rint(t / u * 360.0 / 0.1)], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    return np.stack([t[first], u[first]], axis=1)


def _match(z: NDArray[np.float64], w: NDArray[np.float64], signed: NDArray[np.int64],
           tu: NDArray[np.float64], tol: float
           ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.bool_]]:
    """Matched weight ``(C,)``, matched count ``(C,)`` and whether a matched line is the
    meridional ``n = 0, m != 0`` reflection ``(C,)``."""
    r, n, m = _assign(z, signed, tu)
    hit = r <= tol
    meridian = (hit & (n == 0) & (m != 0)).any(axis=1)
    return (hit * w[None, :]).sum(1), hit.sum(1), meridian


def _missing(tu: NDArray[np.float64], csym: int, z: NDArray[np.float64], tol: float,
             region: tuple[float, float], r_out: float, chunk: int = 128) -> NDArray[np.float64]:
    """Predicted lines inside the observed region (heights <= region[0], first maximum for
    ``r_out`` <= region[1]) with no observed line within ``1.5 tol``, counted once per
    distinct height (heights binned at ``tol``), ``(C,)``."""
    z_lim, r_lim = region
    jp = _jprime_table()
    n_max = int(np.searchsorted(jp, 2 * math.pi * r_out * r_lim, side="right")) - 1
    n_max = max(0, min(n_max, _MAX_ORDER))
    n_max -= n_max % csym
    n = np.arange(-n_max, n_max + 1, csym).astype(np.float64)
    out = np.zeros(len(tu))
    for start in range(0, len(tu), chunk):
        t, u = tu[start:start + chunk, 0], tu[start:start + chunk, 1]
        m_hi = int(np.ceil((z_lim + np.abs(t).max() * n_max) / u.min())) + 1
        m = np.arange(-m_hi, m_hi + 1, dtype=np.float64)
        zz = n[None, :, None] * t[:, None, None] + m[None, None, :] * u[:, None, None]
        inside = (zz > 2.5 * tol) & (zz <= z_lim)
        bins = np.where(inside, np.rint(zz / tol), -1).reshape(len(t), -1)
        for zi in z:
            bins[np.abs(bins * tol - zi) <= 1.5 * tol] = -1
        bins.sort(axis=1)
        distinct = (np.diff(bins, axis=1) != 0) & (bins[:, 1:] >= 0)
        out[start:start + chunk] = distinct.sum(1) + (bins[:, 0] >= 0)
    return out


def _note(rise: float, csym: int, meridian_seen: bool, z_max: float, c1_too: bool) -> str:
    parts = ["hand: the twist sign cannot be decided from a 2D spectrum (±twist fit equally)",
             "Bessel order signs (and |n| beyond the radius prior) undetermined"]
    if not meridian_seen:
        where = ("past the resolution used" if 1.0 / rise > z_max
                 else "inside the resolution used but not seen")
        parts.append(f"rise/pitch: no meridional reflection at 1/rise ({1.0 / rise:.4f} 1/Å, "
                     f"{where}); the indexer cannot decide rise versus pitch (other rises "
                     "with the same pitch fit as well)")
    if csym > 1:
        parts.append(f"Cn vs n-start: C{csym} predicts only orders that are multiples of "
                     f"{csym}; the missing orders may be weak rather than extinct, and a "
                     f"{csym}-start/C1 re-indexing explains the same heights"
                     + (" (a C1 candidate with this rise and twist is also listed)"
                        if c1_too else ""))
    return "; ".join(parts)

