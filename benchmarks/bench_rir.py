"""Benchmark :class:`csplugin.averaging.rir.RIRClass2D` on simulated projections.

The data set (also used by ``tests/test_rir.py``) is built here, not in the package:

volume
    ``--atoms`` Gaussian "atoms" (σ 0.7-1.2 px, amplitudes 0.5-1.5) filling five
    spherical domains of different sizes strung along a bent, elongated, asymmetric chain
    (about 55 px long at ``--scale 1.4``, the default; a blob it is not). ``--atoms``,
    ``--scale`` and ``--atom-sigma`` give smoother or smaller volumes (see ``--sweep``);
    ``--seeds`` draws other volumes of the same kind.
projection
    Uniformly random rotations (viewing direction and in-plane angle); each atom projects
    exactly to a 2D Gaussian at its rotated ``(x, y)``, so the projector is "rotate the
    atoms, sum Gaussians" (separable, numpy).
noise
    White Gaussian noise of variance ``σ² = P / SNR``, ``P`` the mean over images of each
    clean image's pixel variance over the whole box.

Accuracy is ASPIRE's purity measure: for every particle and each of its ``n_nbor - 1``
neighbours, the angle between their viewing directions up to mirroring,
``arccos |v_i · v_j|`` (random neighbours: about 57°). The mirror flag is checked too: a
neighbour found mirrored should view from the opposite hemisphere (``v_i · v_j < 0``).

Printed: the ``classify()`` time cold (first call in the process: builds the
Fourier–Bessel basis and its noise covariance, loads the compiled kernels from numba's
on-disk cache; the very first run on a machine also compiles them) and warm (best of
``--repeats``), stage timings, and the distribution of the neighbour angles. Reference: ASPIRE 0.14.3's ``RIRClass2D`` took 7.8-10.4 s on the same
size (2,000 × 64 px) on this machine (``/work/shared/reference/aspire.md`` §5).

Usage::

    python benchmarks/bench_rir.py [--n 2000] [--size 64] [--snr 0.125] [--n-nbor 10]
        [--repeats 3] [--seeds 0 1 2] [--baseline] [--sweep]
"""

from __future__ import annotations

import argparse
import time
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


def describe(angles: np.ndarray) -> str:
    """The distribution of neighbour angles in one line."""
    edges = (5, 10, 15, 20, 30, 45)
    within = "  ".join(f"≤{e}°: {100 * np.mean(angles <= e):5.1f}%" for e in edges)
    q = np.percentile(angles, [50, 90, 99])
    return (f"mean {angles.mean():5.2f}°  median {q[0]:5.2f}°  p90 {q[1]:5.2f}°  "
            f"p99 {q[2]:5.2f}°  max {angles.max():5.1f}°\n    {within}")


def run(sim: Simulation, n_nbor: int, repeats: int, label: str, **options: object) -> float:
    """Classify once cold (the basis and its noise covariance built, compiled kernels
    loaded from numba's cache) and ``repeats`` times warm; print timing and accuracy."""
    from csplugin.averaging.fb_basis import fb_basis
    from csplugin.averaging.rir import RIRClass2D

    fb_basis.cache_clear()
    start = time.perf_counter()
    RIRClass2D(sim.images, n_nbor=n_nbor, seed=0, **options).classify()
    cold = time.perf_counter() - start
    best, classifier = np.inf, None
    for _ in range(repeats):
        classifier = RIRClass2D(sim.images, n_nbor=n_nbor, seed=0, **options)
        start = time.perf_counter()
        classifier.classify()
        best = min(best, time.perf_counter() - start)
    assert classifier is not None
    angles = neighbor_angles(sim.views, classifier.class_indices)
    summary = classifier.summary
    print(f"{label}: classify {cold:.2f} s cold, {best:.2f} s warm (best of {repeats}); "
          "stages " + ", ".join(f"{k} {v:.2f}" for k, v in summary["seconds"].items()))
    print(f"    {summary['spca_components']} steerable components (k ≤ "
          f"{summary['spca_max_frequency']}), {summary['bispectrum_triplets']} triplets -> "
          f"{summary['bispectrum_components']}; noise variance {summary['noise_variance']:.4g} "
          f"(true {sim.noise_variance:.4g})")
    print(f"    neighbour angle: {describe(angles)}")
    agreement = mirror_agreement(sim.views, classifier.class_indices, classifier.class_refl)
    print(f"    mirror flag consistent with the view: {100 * agreement:.1f}%")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--snr", type=float, default=1 / 8)
    parser.add_argument("--n-nbor", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds of the volume and the data (one run each)")
    parser.add_argument("--atoms", type=int, default=250)
    parser.add_argument("--scale", type=float, default=1.4)
    parser.add_argument("--atom-sigma", type=float, nargs=2, default=(0.7, 1.2))
    parser.add_argument("--baseline", action="store_true",
                        help="also run without diffusion, keeping the n_nbor - 1 nearest in "
                             "the invariant features (ASPIRE's RIR ranking; the alignment "
                             "only reorders them)")
    parser.add_argument("--sweep", action="store_true",
                        help="also run smoother / smaller volumes (harder)")
    args = parser.parse_args()

    volumes = [("default volume", dict(atoms=args.atoms, scale=args.scale,
                                       atom_sigma=tuple(args.atom_sigma)))]
    if args.sweep:
        volumes += [("fewer atoms (200)", dict(atoms=200, scale=1.4, atom_sigma=(0.7, 1.2))),
                    ("more atoms (300)", dict(atoms=300, scale=1.4, atom_sigma=(0.7, 1.2))),
                    ("smaller (scale 1.0)", dict(atoms=250, scale=1.0, atom_sigma=(0.7, 1.2))),
                    ("smooth (300 atoms, σ 1-2 px, scale 1.0)",
                     dict(atoms=300, scale=1.0, atom_sigma=(1.0, 2.0)))]
    for name, spec in volumes:
        for seed in args.seeds:
            start = time.perf_counter()
            sim = simulate(args.n, args.size, args.snr, seed,
                           volume=atom_volume(seed=seed, **spec))  # type: ignore[arg-type]
            print(f"== {name} {spec}, seed {seed}: {args.n} x {args.size} px at SNR "
                  f"{args.snr:g} (simulated in {time.perf_counter() - start:.1f} s), "
                  f"n_nbor {args.n_nbor}")
            run(sim, args.n_nbor, args.repeats, "RIRClass2D (default)")
            if args.baseline:
                run(sim, args.n_nbor, 1, "bispectrum NN only",
                    diffusion=False, n_candidates=args.n_nbor - 1)


if __name__ == "__main__":
    main()
