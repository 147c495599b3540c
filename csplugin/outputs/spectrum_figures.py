"""Figures of the helical part of the power-spectrum job (matplotlib object API, Agg, no pyplot).

``ps_class{k}.png``: the class average (turned like the spectrum) | the spectrum, cropped for
display to where the layer lines end (or ``display_resolution``), contrast from percentiles of
that region (the zero-frequency peak excluded), the detected layer-line heights marked on the
meridian with 1/Å and Å values, the top candidate's predicted layer lines (first maxima, Bessel
order on each) | meridian, equator and radial profiles with units.
and, with half sets, the half-set correlation along each detected layer line (4th panel).

Cost: one figure per class, object API at 72 dpi, the displayed images decimated to at most
320 px, image panels without tick machinery (their scale is written on them): about 0.15-0.2 s
a class; the classes are drawn on a small thread pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from csplugin.engines.power_spectrum import profiles
from formats.atomic import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["class_figure", "class_png", "display_limit", "spectrum_display"]

_DPI = 72
_MAX_DISPLAY_PX = 320


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI)


def _save(fig: Figure, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)


def display_limit(lines: list[Any], nyquist: float, display_resolution: float | None,
                  candidate: Any | None = None) -> float:
    """Half-width (1/Å) of the displayed spectrum: ``1/display_resolution`` if given, else
    15 % beyond the highest layer line or first maximum detected (at least a fifth of Nyquist),
    else Nyquist."""
    if display_resolution is not None:
        return min(nyquist, 1.0 / display_resolution)
    real = [ln for ln in lines if not (ln.half_agreement < 0.3)]  # NaN (no halves) counts
    if not real:
        return nyquist
    reach = max(max(ln.height, ln.peak_radius) for ln in real)
    return float(min(nyquist, max(1.15 * reach, 0.2 * nyquist)))


def _decimate(image: np.ndarray) -> np.ndarray:
    """Block mean down to at most ``_MAX_DISPLAY_PX`` pixels a side (a figure panel is about
    that wide, and drawing costs by the pixel)."""
    factor = max(1, int(math.ceil(image.shape[0] / _MAX_DISPLAY_PX)))
    if factor == 1:
        return image
    k = image.shape[0] // factor
    return image[:k * factor, :k * factor].reshape(k, factor, k, factor).mean(axis=(1, 3))


def spectrum_display(spectrum: np.ndarray, pixel: float, limit: float
                     ) -> tuple[np.ndarray, float, float, float]:
    """The displayed part of a centred spectrum and its contrast.

    Returns
    -------
    shown : ndarray
        ``log10(1 + P / median)`` of the square within ``limit`` 1/Å of the centre, decimated
        (block mean) to at most 320 px.
    half : float
        Its half-width in 1/Å (for ``extent``).
    vmin, vmax : float
        The 2nd and 99.7th percentiles of ``shown`` outside the central 3 % (the DC peak
        and the box-edge transform), i.e. of the signal region.
    """
    m = spectrum.shape[0]
    c = m // 2
    step = 1.0 / (m * pixel)
    h = max(4, min(c, int(math.ceil(limit / step))))
    part = np.asarray(spectrum[c - h:c + h, c - h:c + h], dtype=np.float64)
    part = _decimate(part)
    positive = part[part > 0]
    scale = float(np.median(positive)) if positive.size else 1.0
    shown = np.log10(1.0 + np.maximum(part, 0.0) / scale)
    n = shown.shape[0]
    y, x = np.mgrid[0:n, 0:n] - n // 2
    signal = shown[np.hypot(x, y) > 0.03 * n]
    vmin, vmax = (np.percentile(signal, (2.0, 99.7)) if signal.size else (0.0, 1.0))
    if vmax <= vmin:
        vmax = vmin + 1.0
    return shown, h * step, float(vmin), float(vmax)


def class_png(path: Path, spectrum: np.ndarray, header_pixel: float, average: np.ndarray | None,
              pixel_size: float, result: Any, axis: str, display_resolution: float | None,
              quantity: str = "power", title: str = "", noise_sd: float | None = None) -> None:
    """One class's figure (module docstring): average | spectrum | profiles | agreement.

    ``result`` is a :class:`csplugin.jobs.helical_indexing.ClassIndex` (lines, candidates,
    axis angle). The image panels have no tick machinery (their scale is written on them),
    which keeps a figure near 0.15 s."""
    nyquist = 1.0 / (2.0 * header_pixel)
    lines = list(result.lines)
    top = result.candidates[0] if result.candidates else None
    limit = display_limit(lines, nyquist, display_resolution)
    shown, half, vmin, vmax = spectrum_display(spectrum, header_pixel, limit)
    with_agreement = noise_sd is not None
    fig = _figure(19.0 if with_agreement else 15.0, 4.6)
    ratios = [1.0, 1.0, 1.15] + ([1.0] if with_agreement else [])
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.13, top=0.86, wspace=0.22)
    axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    ax_avg, ax_ps, ax_pr = axes[:3]
    ax_avg.set_axis_off()
    pos = ax_avg.get_position()
    if average is not None:
        n = average.shape[0]
        shown_avg = _decimate(np.asarray(average, dtype=np.float64))
        lo, hi = np.percentile(shown_avg, (0.5, 99.5))
        ax_avg.imshow(shown_avg, cmap="gray", origin="lower", vmin=lo,
                      vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax_avg.text(0.02, 0.02, f"{n * pixel_size:.0f} Å box", transform=ax_avg.transAxes,
                    color="y", fontsize=7)
    angle = "" if result.axis_angle_deg is None else (
        f"; axis {result.axis_angle_deg:.1f}° in the class frame")
    fig.text(pos.x0, 0.9, f"{title} average, turned like its spectrum{angle}", fontsize=9)
    ax_ps.set_axis_off()
    ax_ps.imshow(shown, cmap="gray", origin="lower", extent=(-half, half, -half, half),
                 vmin=vmin, vmax=vmax, interpolation="nearest")
    ax_ps.set_xlim(-half, half)
    ax_ps.set_ylim(-half, half)
    pos = ax_ps.get_position()
    what = "P" if quantity == "power" else "|F|"
    fig.text(pos.x0, 0.9, f"{title} spectrum, log10(1 + {what}/median); edge ±{half:.4f} Å⁻¹ "
             f"({1 / half:.1f} Å)", fontsize=9)
    ax_ps.text(0.99, 0.01, f"{'kx' if axis != 'horizontal' else 'ky'} →", color="w",
               transform=ax_ps.transAxes, fontsize=7, ha="right")
    _mark_lines(ax_ps, lines, half, axis)
    if top is not None:
        _overlay(ax_ps, top, half, axis)
    prof = profiles(spectrum, header_pixel, "horizontal" if axis == "horizontal" else "vertical")
    freq = prof["frequency"]
    keep = (freq > 0) & (freq <= limit)
    colours = {"meridian": "#1f77b4", "equator": "#ff7f0e", "radial": "#2ca02c"}
    for i, (name, colour) in enumerate(colours.items()):
        ax_pr.plot(freq[keep], np.log10(np.clip(prof[name][keep], 1e-30, None)), lw=1,
                   color=colour)
        ax_pr.text(0.97, 0.95 - 0.07 * i, name, color=colour, fontsize=7, ha="right",
                   va="top", transform=ax_pr.transAxes)
    ax_pr.set_xlim(0.0, limit)
    _plain_axes(ax_pr, "spatial frequency (1/Å)",
                "mean power |F|² (a.u. per particle)" if quantity == "power"
                else "mean amplitude |F| (a.u. per particle)", log=True)
    fig.text(ax_pr.get_position().x0, 0.9, "profiles", fontsize=9)
    if with_agreement:
        _agreement(axes[3], result, float(noise_sd))
        fig.text(axes[3].get_position().x0, 0.9, "half-set agreement along each layer line",
                 fontsize=9)
    _save(fig, path)


def _plain_axes(ax: Any, xlabel: str, ylabel: str, *, log: bool = False) -> None:
    """Frame, four labelled ticks per side and axis labels drawn directly, without matplotlib's
    axis machinery (its tick layout is most of a figure's drawing time). Call after plotting,
    with the limits set; ``log``: the y data are log10 values, labelled as powers of ten."""
    from matplotlib.ticker import MaxNLocator

    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    ax.set_axis_off()
    ax.plot([0, 1, 1, 0, 0], [0, 0, 1, 1, 0], color="k", lw=0.8, transform=ax.transAxes,
            clip_on=False)
    xt = ax.get_xaxis_transform()  # x data, y axes
    yt = ax.get_yaxis_transform()  # x axes, y data
    for x in MaxNLocator(4).tick_values(x0, x1):
        if x0 <= x <= x1:
            ax.plot([x, x], [0, 0.02], color="k", lw=0.8, transform=xt)
            ax.text(x, -0.015, f"{x:g}", transform=xt, ha="center", va="top", fontsize=7)
    for y in MaxNLocator(4, integer=log).tick_values(y0, y1):
        if y0 <= y <= y1:
            ax.plot([0, 0.02], [y, y], color="k", lw=0.8, transform=yt)
            ax.text(-0.015, y, f"1e{y:g}" if log else f"{y:g}", transform=yt, ha="right",
                    va="center", fontsize=7)
    ax.text(0.5, -0.09, xlabel, transform=ax.transAxes, ha="center", va="top", fontsize=8)
    ax.text(-0.16, 0.5, ylabel, transform=ax.transAxes, ha="center", va="center",
            rotation=90, fontsize=8)


def _xy(axis: str, r: float, z: float) -> tuple[float, float]:
    """Plot position of (radial R, height Z) for the spectrum's orientation."""
    return (z, r) if axis == "horizontal" else (r, z)


def _segments(ax: Any, points: list[tuple[float, float, float, float]], colour: str,
              lw: float) -> None:
    """Many short line segments ``(x0, y0, x1, y1)`` as one artist (NaN-separated)."""
    if not points:
        return
    p = np.asarray(points, dtype=np.float64)
    xs = np.column_stack([p[:, 0], p[:, 2], np.full(len(p), np.nan)]).ravel()
    ys = np.column_stack([p[:, 1], p[:, 3], np.full(len(p), np.nan)]).ravel()
    ax.plot(xs, ys, color=colour, lw=lw)


def _mark_lines(ax: Any, lines: list[Any], half: float, axis: str) -> None:
    """Ticks at each detected height on the meridian (yellow: meridional reflection), the
    strongest six (that agree between the half sets) labelled in 1/Å and Å at the left."""
    labelled = sorted((ln for ln in lines if not (ln.half_agreement < 0.3)),
                      key=lambda ln: -ln.strength)[:6]
    ticks: dict[str, list[tuple[float, float, float, float]]] = {"#ffcc00": [], "#33ccff": []}
    for ln in lines:
        if ln.height > half:
            continue
        colour = "#ffcc00" if ln.meridional else "#33ccff"
        ticks[colour].append((*_xy(axis, -0.05 * half, ln.height),
                              *_xy(axis, 0.05 * half, ln.height)))
        if ln in labelled:
            tx, ty = _xy(axis, -0.98 * half, ln.height)
            ax.text(tx, ty, f"{ln.height:.4f} Å⁻¹ ({1 / ln.height:.1f} Å)", color=colour,
                    fontsize=6, va="center", ha="left" if axis != "horizontal" else "center")
    for colour, points in ticks.items():
        _segments(ax, points, colour, 1.2)


def _overlay(ax: Any, top: Any, half: float, axis: str, max_order: int = 10,
             max_labels: int = 12) -> None:
    """The top candidate's predicted first maxima, short marks at (±R, ±Z) for Bessel orders
    ``|n| <= max_order``, the order written beside the +R, +Z mark of the lowest
    ``max_labels`` lines (text is the dear part of a figure)."""
    width = 0.025 * half
    marks: list[tuple[float, float, float, float]] = []
    labels = 0
    for z, n, r in top.predicted:
        if z > half or r > half or abs(n) > max_order:
            continue
        for sr in ((-1, 1) if r > 0 else (1,)):
            for sz in (-1, 1):
                marks.append((*_xy(axis, sr * r - width, sz * z),
                              *_xy(axis, sr * r + width, sz * z)))
        if labels < max_labels:
            x, y = _xy(axis, r + width, z)
            ax.text(x, y, f"{n}", color="#ff5050", fontsize=6, ha="left", va="bottom")
            labels += 1
    _segments(ax, marks, "#ff5050", 1.0)
    ax.text(0.99, 0.99, f"top candidate: rise {top.rise:.2f} Å, twist ±{abs(top.twist):.2f}°, "
            f"C{top.csym} (red: its layer lines, Bessel order n)", transform=ax.transAxes,
            color="#ff5050", fontsize=6, va="top", ha="right")


def _agreement(ax: Any, result: Any, noise_sd: float) -> None:
    """Half-set correlation along each layer line vs its height (dot size ~ strength)."""
    lines = [ln for ln in result.lines if np.isfinite(ln.half_agreement)]
    if lines:
        z = np.array([ln.height for ln in lines])
        a = np.array([ln.half_agreement for ln in lines], dtype=np.float64)
        s = np.array([ln.strength for ln in lines])
        colours = ["#d08000" if ln.meridional else "#1f77b4" for ln in lines]
        ax.scatter(z, a, s=10 + 4 * np.sqrt(np.maximum(s, 0)), c=colours)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.axhline(3 * noise_sd, color="r", lw=0.8, ls="--")
    ax.set_ylim(-0.5, 1.05)
    ax.text(0.98, 0.02, f"dashed: 3 s.d. of noise ({3 * noise_sd:.2f})", color="r",
            fontsize=7, ha="right", transform=ax.transAxes)
    _plain_axes(ax, "layer-line height Z (1/Å); orange: meridional",
                "correlation of the half sets")


def class_figure(outdir: Path, result: Any, spectrum: np.ndarray, header_pixel: float,
                 pixel_size: float, axis: str, options: Any,
                 draw: Callable[..., None] | None = None) -> dict[str, str]:
    """Draw a class's figure (:func:`class_png`, with the half-set agreement panel where
    its lines have half-set agreements) by ``draw(class_png, ...)`` (a
    :class:`csplugin.outputs.figure_process.FigureProcess`; default: here, now); return
    ``{"spectrum": file}`` (relative to ``outdir``) for ``index.html``."""
    name = f"ps_class{result.k}.png"
    m = spectrum.shape[0]
    noise_sd = math.sqrt(max(options.pad, 1) / max(m / 2, 1))
    (draw or _now)(class_png, outdir / name, spectrum, header_pixel, result.average,
                   pixel_size, result, axis, options.display_resolution, options.quantity,
                   f"class {result.k}", noise_sd)
    return {"spectrum": name}


def _now(function: Callable[..., None], *args: Any) -> None:
    function(*args)
