"""Synthetic 2D-classification jobs with known alignments, rendered analytically.

Class images are sums of anisotropic Gaussians, so a particle can be rendered exactly for any
pose: with the internal convention ``A(q) = P(R(-θ) q - s)`` the raw particle is
``P(p) = C(R(θ)(p + s))``, i.e. each Gaussian of the class image ``C`` with centre ``c`` and
covariance ``Σ`` becomes a Gaussian with centre ``R(-θ) c - s`` and covariance
``R(-θ) Σ R(θ)`` (pixel coordinates ``x = col - N//2``, ``y = row - N//2``).

:func:`make_job` writes a small cryoSPARC project (particle stacks, a 2D-classification
``J3_020_particles.cs`` with ``alignments2D``, its passthrough with CTF and locations in a
different row order, and the noise-free class images) and the same particles as a RELION 3.1
``particles.star``. It backs ``csplugin demo``, the tests and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from csplugin.core.fields import Cs, Relion
from formats.cs import encode, write_cs
from formats.mrc import write_stack
from formats.star import join_image_names, write_star


@dataclass(frozen=True)
class GaussianModel:
    """A 2D image made of Gaussians.

    Attributes
    ----------
    centres
        ``(k, 2)`` centres ``(x, y)`` in pixels from the box centre.
    covariances
        ``(k, 2, 2)`` covariance matrices in px².
    amplitudes
        ``(k,)`` peak heights.
    """

    centres: np.ndarray
    covariances: np.ndarray
    amplitudes: np.ndarray


def _rotation(angle: np.ndarray) -> np.ndarray:
    """``R(a)`` for ``(n,)`` angles -> ``(n, 2, 2)``."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def render(model: GaussianModel, box: int, angles: np.ndarray | None = None,
           shifts: np.ndarray | None = None) -> np.ndarray:
    """Render raw particles ``P(p) = C(R(θ)(p + s))`` of a class image ``C`` exactly.

    Parameters
    ----------
    model
        The class image ``C``.
    box
        Image size ``N``.
    angles
        ``(n,)`` internal angles θ (radians); default one image with θ = 0.
    shifts
        ``(n, 2)`` internal shifts ``(s_x, s_y)`` in pixels; default zero.

    Returns
    -------
    np.ndarray
        ``(n, N, N)`` float64 images whose aligned versions equal ``C``.
    """
    angles = np.zeros(1) if angles is None else np.asarray(angles, np.float64)
    shifts = np.zeros((len(angles), 2)) if shifts is None else np.asarray(shifts, np.float64)
    grid = np.arange(box) - box // 2
    x, y = np.meshgrid(grid, grid)  # x varies along columns
    back = _rotation(-angles)  # R(-θ)
    images = np.zeros((len(angles), box, box))
    for centre, cov, amp in zip(model.centres, model.covariances, model.amplitudes):
        c = np.einsum("nij,j->ni", back, centre) - shifts  # (n, 2)
        inv = np.linalg.inv(back @ cov @ np.transpose(back, (0, 2, 1)))  # (n, 2, 2)
        dx = x[None] - c[:, 0, None, None]
        dy = y[None] - c[:, 1, None, None]
        q = (inv[:, 0, 0, None, None] * dx * dx + 2 * inv[:, 0, 1, None, None] * dx * dy
             + inv[:, 1, 1, None, None] * dy * dy)
        images += amp * np.exp(-0.5 * q)
    return images


def _blob(x: float, y: float, sx: float, sy: float, tilt: float = 0.0) -> tuple:
    r = _rotation(np.array([tilt]))[0]
    return (x, y), r @ np.diag([sx**2, sy**2]) @ r.T


def class_models(box: int) -> list[GaussianModel]:
    """Three test classes for a box of ``box`` px.

    0. a helical filament along x: two strands of subunits (rise ``box/16`` px, pitch
       ``box/2`` px) crossing the whole box, so its averaged power spectrum has layer lines;
    1. an asymmetric "L" of three unequal blobs;
    2. an off-centre elongated blob with a small satellite.
    """
    u = box / 64
    rise, pitch, radius = box / 16, box / 2, 6 * u
    xs = np.arange(-box, box + rise, rise)
    helix = [_blob(x, radius * np.sin(2 * np.pi * x / pitch + phase), 1.4 * u, 1.4 * u)
             for x in xs for phase in (0.0, np.pi)]
    lshape = [_blob(-8 * u, -6 * u, 3 * u, 3 * u), _blob(6 * u, -6 * u, 2 * u, 2 * u),
              _blob(-8 * u, 8 * u, 1.5 * u, 1.5 * u)]
    rod = [_blob(3 * u, 2 * u, 8 * u, 2.5 * u, 0.5), _blob(-9 * u, -7 * u, 1.5 * u, 1.5 * u)]
    models = []
    for blobs, amp in ((helix, 1.0), (lshape, 1.0), (rod, 1.0)):
        centres = np.array([b[0] for b in blobs], np.float64)
        covs = np.array([b[1] for b in blobs], np.float64)
        models.append(GaussianModel(centres, covs, np.full(len(blobs), amp)))
    return models


@dataclass(frozen=True)
class SyntheticJob:
    """Paths and ground truth of a job written by :func:`make_job`."""

    project: Path
    particles_cs: Path
    passthrough_cs: Path
    particles_star: Path
    class_images: Path
    angles: np.ndarray  # (n,) internal θ, radians
    shifts: np.ndarray  # (n, 2) internal s, pixels
    classes: np.ndarray  # (n,) 0-based
    pixel_size: float
    box: int


def make_job(outdir: str | Path, n_per_class: int = 200, box: int = 96,
             pixel_size: float = 1.5, noise_sigma: float = 0.5, n_stacks: int = 2,
             max_shift: float = 4.0, seed: int = 0, float16: bool = False) -> SyntheticJob:
    """Write a synthetic cryoSPARC 2D-classification job and its RELION equivalent.

    Layout under ``outdir``::

        project/J2/extract/mic{k}_particles.mrcs   particle stacks (.mrcs, as RELION needs)
        project/J3/J3_020_particles.cs             blob + alignments2D (pose, shift, class)
        project/J3/J3_passthrough_particles.cs     ctf + location, rows in another order
        project/J3/J3_020_class_averages.mrc       noise-free class images, slice k = class k
        project/particles.star                     RELION 3.1, paths relative to project/

    Parameters
    ----------
    n_per_class
        Particles per class (3 classes).
    noise_sigma
        Standard deviation of the added white Gaussian noise (class peak height is 1).
    max_shift
        Shifts are uniform in ``[-max_shift, max_shift]`` px on each axis.
    """
    rng = np.random.default_rng(seed)
    project = Path(outdir) / "project"
    (project / "J2" / "extract").mkdir(parents=True, exist_ok=True)
    (project / "J3").mkdir(parents=True, exist_ok=True)
    models = class_models(box)
    n = n_per_class * len(models)
    classes = rng.permutation(np.repeat(np.arange(len(models)), n_per_class))
    # float32 values, so the .cs (float32) and the .star describe exactly the same poses
    angles = rng.uniform(0, 2 * np.pi, n).astype(np.float32).astype(np.float64)
    shifts = rng.uniform(-max_shift, max_shift, (n, 2)).astype(np.float32).astype(np.float64)
    stack_of = np.sort(rng.integers(0, n_stacks, n))
    paths = np.array([f"J2/extract/mic{k:03d}_particles.mrcs" for k in stack_of])
    index = np.zeros(n, np.int64)
    for k in range(n_stacks):
        rows = np.flatnonzero(stack_of == k)
        index[rows] = np.arange(len(rows))
        images = np.empty((len(rows), box, box), np.float32)
        for c, model in enumerate(models):
            mine = classes[rows] == c
            images[mine] = render(model, box, angles[rows][mine], shifts[rows][mine])
        images += rng.normal(0, noise_sigma, images.shape).astype(np.float32)
        write_stack(project / paths[rows[0]], images, pixel_size, float16=float16)
    truth = np.concatenate([render(m, box) for m in models]).astype(np.float32)
    write_stack(project / "J3" / "J3_020_class_averages.mrc", truth, pixel_size)

    particles_cs, passthrough_cs, particles_star = write_particle_metadata(
        project, rng, paths, index, stack_of, angles, shifts, classes, pixel_size, box)
    return SyntheticJob(project, particles_cs, passthrough_cs, particles_star,
                        project / "J3" / "J3_020_class_averages.mrc", angles, shifts, classes,
                        pixel_size, box)


def write_particle_metadata(project: Path, rng: np.random.Generator, paths: np.ndarray,
                            index: np.ndarray, stack_of: np.ndarray, angles: np.ndarray,
                            shifts: np.ndarray, classes: np.ndarray, pixel_size: float, box: int,
                            *, extra_cs: dict[str, tuple[str, np.ndarray]] | None = None,
                            extra_star: dict[str, np.ndarray] | None = None
                            ) -> tuple[Path, Path, Path]:
    """Write the particle metadata of a synthetic 2D job (stacks already written).

    Writes ``J3/J3_020_particles.cs`` (blob + alignments2D), ``J3/J3_passthrough_particles.cs``
    (CTF + location, rows permuted so a merge must use ``uid``) and ``particles.star``
    (RELION 3.1, paths relative to ``project``), with random CTF, posteriors and locations
    drawn from ``rng``.

    Parameters
    ----------
    project
        The cryoSPARC project directory.
    paths, index, stack_of
        ``(n,)`` stack path (relative to ``project``), 0-based slice and stack number.
    angles, shifts, classes
        ``(n,)`` internal θ (rad), ``(n, 2)`` internal s (px), ``(n,)`` 0-based classes.
    extra_cs
        More fields of the main ``.cs``: name -> (numpy dtype string, ``(n,)`` values).
    extra_star
        More ``data_particles`` columns: name -> ``(n,)`` values.

    Returns
    -------
    (particles_cs, passthrough_cs, particles_star)
    """
    n = len(angles)
    uid = rng.choice(2**62, n, replace=False).astype(np.uint64)
    fields = [
        ("uid", "<u8"), (Cs.BLOB_PATH, f"S{max(map(len, paths))}"), (Cs.BLOB_IDX, "<u4"),
        (Cs.BLOB_SHAPE, "<u4", (2,)), (Cs.BLOB_PSIZE, "<f4"), (Cs.BLOB_SIGN, "<f4"),
        (Cs.A2D_SPLIT, "<u4"), (Cs.A2D_SHIFT, "<f4", (2,)),
        (Cs.A2D_POSE, "<f4"), (Cs.A2D_PSIZE, "<f4"),
        (Cs.A2D_CLASS_POSTERIOR, "<f4"), (Cs.A2D_CLASS, "<u4"),
    ] + [(name, dtype) for name, (dtype, _) in (extra_cs or {}).items()]
    main = np.zeros(n, dtype=fields)
    for name, (_, values) in (extra_cs or {}).items():
        main[name] = values
    main["uid"], main[Cs.BLOB_PATH], main[Cs.BLOB_IDX] = uid, encode(paths), index
    main[Cs.BLOB_SHAPE], main[Cs.BLOB_PSIZE], main[Cs.BLOB_SIGN] = box, pixel_size, -1.0
    main[Cs.A2D_SHIFT], main[Cs.A2D_POSE] = shifts, angles
    main[Cs.A2D_PSIZE] = pixel_size
    main[Cs.A2D_CLASS_POSTERIOR] = rng.uniform(0.5, 1.0, n)
    main[Cs.A2D_CLASS] = classes
    defocus = np.round(rng.uniform(8000, 25000, n))
    passthrough = np.zeros(n, dtype=[
        ("uid", "<u8"), (Cs.CTF_TYPE, "S9"), (Cs.CTF_EXP_GROUP, "<u4"), (Cs.CTF_ACCEL_KV, "<f4"),
        (Cs.CTF_CS_MM, "<f4"), (Cs.CTF_AMP_CONTRAST, "<f4"), (Cs.CTF_DF1, "<f4"),
        (Cs.CTF_DF2, "<f4"), (Cs.CTF_DF_ANGLE, "<f4"), (Cs.CTF_PHASE_SHIFT, "<f4"),
        (Cs.CTF_SCALE, "<f4"), (Cs.CTF_BFACTOR, "<f4"), (Cs.LOC_MICROGRAPH_PATH, "S40"),
        (Cs.LOC_MICROGRAPH_SHAPE, "<u4", (2,)), (Cs.LOC_CENTER_X, "<f4"),
        (Cs.LOC_CENTER_Y, "<f4"),
    ])
    passthrough["uid"], passthrough[Cs.CTF_TYPE], passthrough[Cs.CTF_EXP_GROUP] = uid, b"spline", 1
    passthrough[Cs.CTF_ACCEL_KV], passthrough[Cs.CTF_CS_MM] = 300.0, 2.7
    passthrough[Cs.CTF_AMP_CONTRAST], passthrough[Cs.CTF_SCALE] = 0.1, 1.0
    passthrough[Cs.CTF_DF1], passthrough[Cs.CTF_DF2] = defocus + 300, defocus - 300
    passthrough[Cs.CTF_DF_ANGLE] = rng.uniform(0, np.pi, n).astype(np.float32)
    passthrough[Cs.LOC_MICROGRAPH_PATH] = encode([f"J1/mic{k:03d}.mrc" for k in stack_of])
    passthrough[Cs.LOC_MICROGRAPH_SHAPE] = (4096, 4096)
    passthrough[Cs.LOC_CENTER_X] = rng.uniform(0.05, 0.95, n)
    passthrough[Cs.LOC_CENTER_Y] = rng.uniform(0.05, 0.95, n)
    particles_cs = project / "J3" / "J3_020_particles.cs"
    passthrough_cs = project / "J3" / "J3_passthrough_particles.cs"
    write_cs(particles_cs, main)
    write_cs(passthrough_cs, passthrough[rng.permutation(n)])  # merge must use uid

    optics = pd.DataFrame({
        Relion.OPTICS_GROUP: [1], Relion.OPTICS_GROUP_NAME: ["opticsGroup1"],
        Relion.AMPLITUDE_CONTRAST: [0.1], Relion.SPHERICAL_ABERRATION: [2.7],
        Relion.VOLTAGE: [300.0], Relion.IMAGE_PIXEL_SIZE: [float(np.float32(pixel_size))],
        Relion.IMAGE_SIZE: [box], Relion.IMAGE_DIMENSIONALITY: [2],
    })
    star = pd.DataFrame({
        Relion.IMAGE_NAME: join_image_names(index + 1, paths),
        Relion.MICROGRAPH_NAME: [f"J1/mic{k:03d}.mrc" for k in stack_of],
        Relion.DEFOCUS_U: defocus + 300, Relion.DEFOCUS_V: defocus - 300,
        Relion.DEFOCUS_ANGLE: np.rad2deg(passthrough[Cs.CTF_DF_ANGLE].astype(np.float64)),
        Relion.ANGLE_PSI: np.rad2deg(angles),
        Relion.ORIGIN_X_ANGST: shifts[:, 0] * np.float32(pixel_size),
        Relion.ORIGIN_Y_ANGST: shifts[:, 1] * np.float32(pixel_size),
        Relion.CLASS_NUMBER: classes + 1, Relion.OPTICS_GROUP: 1,
    })
    for name, values in (extra_star or {}).items():
        star[name] = values
    particles_star = project / "particles.star"
    write_star(particles_star, {"optics": optics, "particles": star})
    return particles_cs, passthrough_cs, particles_star
