"""PNG figures and CSV tables of results people look at (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from formats.atomic import atomic_output  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def spectrum_png(path: str | Path, spectrum: np.ndarray, pixel_size: float, title: str = "") -> None:
    """A centred spectrum ``(M, M)`` (DC at ``M//2``) on axes in 1/Å, log-scaled display.

    ``pixel_size`` puts Nyquist, ``1/(2 pixel_size)``, at the edge.
    """
    m = spectrum.shape[0]
    step = 1.0 / (m * pixel_size)
    lo, hi = (-(m // 2) - 0.5) * step, (m - m // 2 - 0.5) * step
    shown = np.log10(1.0 + spectrum / max(float(np.median(spectrum[spectrum > 0])), 1e-30)) \
        if (spectrum > 0).any() else spectrum
    vmax = float(np.percentile(shown, 99.9))
    fig, ax = plt.subplots(figsize=(6, 5.2))
    image = ax.imshow(shown, cmap="gray", origin="lower", extent=(lo, hi, lo, hi),
                      vmin=float(np.percentile(shown, 1)), vmax=vmax)
    ax.set_xlabel("kx (1/Å)")
    ax.set_ylabel("ky (1/Å)")
    ax.set_title(f"{title}  (log10(1 + P/median))")
    fig.colorbar(image, ax=ax, shrink=0.8)
    _save(fig, Path(path))


def profiles_csv(path: str | Path, prof: dict[str, np.ndarray]) -> None:
    """Write profiles as CSV: ``frequency_per_A, resolution_A, meridian, equator, radial``."""
    freq = prof["frequency"]
    with np.errstate(divide="ignore"):
        resolution = np.where(freq > 0, 1.0 / np.where(freq > 0, freq, 1.0), np.inf)
    table = np.column_stack([freq, resolution, prof["meridian"], prof["equator"], prof["radial"]])
    with atomic_output(path) as tmp:
        np.savetxt(tmp, table, delimiter=",", fmt="%.8g",
                   header="frequency_per_A,resolution_A,meridian,equator,radial", comments="")


def profiles_png(path: str | Path, prof: dict[str, np.ndarray], title: str = "") -> None:
    """Meridian, equator and radial profiles against spatial frequency (1/Å), log scale."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("meridian", "equator", "radial"):
        values = prof[name]
        ax.semilogy(prof["frequency"][1:], np.clip(values[1:], 1e-30, None), label=name, lw=1)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("average")
    ax.set_title(title)
    ax.legend()
    _save(fig, Path(path))


def montage_png(path: str | Path, images: np.ndarray, labels: list[str], columns: int = 8) -> None:
    """Images ``(n, N, N)`` in a grid, each titled with its label (row 0 at the top)."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.95 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, label in zip(axes.ravel(), images, labels):
        ax.imshow(image, cmap="gray")
        ax.set_title(label, fontsize=8)
    _save(fig, Path(path))
