"""Projections of an asymmetric Gaussian-atom volume at random 3D views, with known truth.

The data set of the RIR classifier's tests and benchmark:

volume
    Gaussian "atoms" (σ 0.7-1.2 px, amplitudes 0.5-1.5) filling five spherical domains of
    different sizes strung along a bent, elongated, asymmetric chain (about 55 px long at
    ``scale=1.4``).
projection
    Uniformly random rotations (viewing direction and in-plane angle); each atom projects
    exactly to a 2D Gaussian at its rotated ``(x, y)`` (separable, numpy).
noise
    White Gaussian noise of variance ``σ² = P / SNR``, ``P`` the mean over images of each
    clean image's pixel variance over the whole box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

#: Domains of the default volume: centre (px, before ``scale``) and radius (px).
DOMAINS = (((-15.0, -4.0, 1.0), 7.0), ((-4.0, 3.0, 4.0), 9.0), ((8.0, -1.0, -3.0), 6.5),
           ((17.0, 6.0, 3.0), 4.5), ((3.0, -10.0, 8.0), 3.0))


@dataclass(frozen=True)
class AtomVolume:
    """Isotropic Gaussian atoms: ``(a, 3)`` centres (px), ``(a,)`` widths and amplitudes."""

    centres: np.ndarray
    sigmas: np.ndarray
    amplitudes: np.ndarray


@dataclass(frozen=True)
class Simulation:
    """Noisy ``images`` ``(n, L, L)`` float32, their ``clean`` projections, the viewing
    directions ``views`` ``(n, 3)`` (unit, volume frame) and the noise variance."""

    images: np.ndarray
    clean: np.ndarray
    views: np.ndarray
    noise_variance: float


def atom_volume(atoms: int = 250, seed: int = 0, scale: float = 1.4,
                atom_sigma: tuple[float, float] = (0.7, 1.2)) -> AtomVolume:
    """An asymmetric, elongated volume of ``atoms`` Gaussian atoms in five domains."""
    rng = np.random.default_rng(seed)
    centres = np.array([c for c, _ in DOMAINS])
    radii = np.array([r for _, r in DOMAINS])
    counts = rng.multinomial(atoms, radii**3 / np.sum(radii**3))
    points = []
    for centre, radius, count in zip(centres, radii, counts):
        direction = rng.standard_normal((count, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        points.append(centre + direction * radius * rng.random((count, 1)) ** (1 / 3))
    amplitudes = rng.uniform(0.5, 1.5, atoms)
    points = np.concatenate(points) * scale
    points -= amplitudes @ points / amplitudes.sum()
    return AtomVolume(points, rng.uniform(*atom_sigma, atoms), amplitudes)


def project(volume: AtomVolume, rotations: np.ndarray, size: int, batch: int = 250
            ) -> np.ndarray:
    """``(n, L, L)`` float32 projections along z of the volume rotated by ``(n, 3, 3)``.

    Pixel ``[row, col]`` is at ``x = col - L//2``, ``y = row - L//2``.
    """
    grid = np.arange(size) - size // 2
    width = 2 * volume.sigmas[:, None] ** 2
    out = np.empty((len(rotations), size, size), np.float32)
    for first in range(0, len(rotations), batch):
        rotated = np.einsum("nij,aj->nai", rotations[first:first + batch], volume.centres)
        gx = np.exp(-((grid - rotated[..., 0:1]) ** 2) / width)
        gy = np.exp(-((grid - rotated[..., 1:2]) ** 2) / width) * volume.amplitudes[:, None]
        out[first:first + batch] = np.matmul(gy.transpose(0, 2, 1), gx)
    return out


def simulate(n: int = 2000, size: int = 64, snr: float | None = 1 / 8, seed: int = 0,
             volume: AtomVolume | None = None) -> Simulation:
    """Projections of ``volume`` (default :func:`atom_volume`) along uniformly random
    rotations, with white noise at ``snr`` (None: noise-free)."""
    rng = np.random.default_rng(seed)
    volume = volume or atom_volume(seed=seed)
    rotations = Rotation.random(n, random_state=int(rng.integers(2**31))).as_matrix()
    clean = project(volume, rotations, size)
    variance = float(np.mean(np.var(clean, axis=(1, 2)))) / snr if snr else 0.0
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(np.sqrt(variance))
    return Simulation(clean + noise, clean, rotations[:, 2, :], variance)


def neighbor_angles(views: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``(n, n_nbor - 1)`` degrees between each particle's and its neighbours' viewing
    directions, up to mirroring (column 0, the particle itself, is left out)."""
    cos = np.abs(np.einsum("ij,ikj->ik", views, views[indices[:, 1:]]))
    return np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))


def mirror_agreement(views: np.ndarray, indices: np.ndarray, refl: np.ndarray) -> float:
    """Fraction of neighbours whose mirror flag matches the side they view from."""
    dots = np.einsum("ij,ikj->ik", views, views[indices[:, 1:]])
    return float(np.mean((dots < 0) == refl[:, 1:]))
