"""Pearson correlation of images inside the inscribed disc (the corners, which rotation
fills with zeros, left out): the one similarity measure of the averaging toolkit, the
class-average comparison and the demo."""

from __future__ import annotations

import numpy as np

from csplugin.core.conventions import disc_mask


def disc_correlations(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Pearson correlation inside the inscribed disc of each of ``images`` ``(m, L, L)`` with
    ``reference`` ``(L, L)``: ``(m,)`` float64 (NaN for a constant image)."""
    disc = np.flatnonzero(disc_mask(reference.shape[-1]))
    t = reference.ravel()[disc].astype(np.float64)
    t -= t.mean()
    a = np.asarray(images, np.float32).reshape(len(images), -1)[:, disc]
    total = a.sum(axis=1, dtype=np.float64)
    power = np.einsum("ij,ij->i", a, a, dtype=np.float64) - total**2 / disc.size
    with np.errstate(divide="ignore", invalid="ignore"):  # Σ a t̃ = Σ (a - ā) t̃ as Σ t̃ = 0
        return (a @ t.astype(np.float32)).astype(np.float64) / np.sqrt(power * (t @ t))


def disc_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two ``(N, N)`` images inside the inscribed disc (radius N/2);
    NaN when either is constant there."""
    disc = disc_mask(a.shape[-1])
    u = a[disc].astype(np.float64) - a[disc].mean()
    v = b[disc].astype(np.float64) - b[disc].mean()
    norm = np.sqrt((u * u).sum() * (v * v).sum())
    return float((u * v).sum() / norm) if norm > 0 else float("nan")
