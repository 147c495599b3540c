"""PNG figures and CSV tables of results people look at (matplotlib's object API, headless).

matplotlib is imported when the first figure is drawn, after the data have been processed,
so it adds nothing to a job's peak memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from formats.atomic import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Figure, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def spectrum_png(path: str | Path, spectrum: np.ndarray, pixel_size: float,
                 prof: dict[str, np.ndarray], title: str = "") -> None:
    """A centred spectrum ``(M, M)`` (DC at ``M//2``) on axes in 1/Å, log-scaled display,
    beside its meridian, equator and radial profiles
    (:func:`csplugin.engines.power_spectrum.profiles`).

    ``pixel_size`` puts Nyquist, ``1/(2 pixel_size)``, at the edge. Row 0 is drawn at the
    bottom, so +ky points up.
    """
    from csplugin.outputs.spectrum_figures import spectrum_display

    # contrast from percentiles of the signal region (DC peak left out), at most 320 px shown
    shown, half, vmin, vmax = spectrum_display(spectrum, pixel_size, 0.5 / pixel_size)
    lo, hi = -half, half
    fig = _figure(11.5, 4.8)
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.12, top=0.9, wspace=0.3)
    left, right = fig.subplots(1, 2)
    image = left.imshow(shown, cmap="gray", origin="lower", extent=(lo, hi, lo, hi),
                        vmin=vmin, vmax=vmax, interpolation="nearest")
    left.set_xlabel("kx (1/Å)")
    left.set_ylabel("ky (1/Å)")
    left.set_title(f"{title}: log10(1 + P / median)")
    fig.colorbar(image, ax=left, shrink=0.85)
    for name in ("meridian", "equator", "radial"):
        right.semilogy(prof["frequency"][1:], np.clip(prof[name][1:], 1e-30, None), label=name,
                       lw=1)
    right.set_xlabel("spatial frequency (1/Å)")
    right.set_ylabel("mean |F|² or |F| (a.u. per particle)")
    right.set_title("profiles")
    right.legend()
    _save(fig, path)


def profiles_csv(path: str | Path, prof: dict[str, np.ndarray]) -> None:
    """Write profiles as CSV: ``frequency_per_A, resolution_A, meridian, equator, radial``."""
    freq = prof["frequency"]
    resolution = np.divide(1.0, freq, out=np.full_like(freq, np.inf), where=freq > 0)
    table = np.column_stack([freq, resolution, prof["meridian"], prof["equator"], prof["radial"]])
    with atomic_output(path) as tmp:
        np.savetxt(tmp, table, delimiter=",", fmt="%.8g",
                   header="frequency_per_A,resolution_A,meridian,equator,radial", comments="")


def montage_png(path: str | Path, images: np.ndarray, labels: list[str], columns: int = 8) -> None:
    """Images ``(n, N, N)`` in a grid, each titled with its label and scaled to its own
    0.5-99.5 percentiles (row 0 at the top)."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    fig = _figure(1.8 * columns, 1.95 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, label in zip(axes, images, labels):
        low, high = np.percentile(image, (0.5, 99.5))
        ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
        ax.set_title(label, fontsize=8)
    _save(fig, path)
