"""The class-averaging engine: one class's particles, aligned by their stored alignments and
stacked (the work of ``csplugin class-averages`` and of the toolkit's stored-alignment averager).

:func:`average_class` reads a class's particles in chunks, aligns each with
:func:`csplugin.engines.transform.align_images` (the aligned image is ``A(q) = P(R(-θ) q - s)``,
see :mod:`csplugin.core.conventions`) and stacks them as an :class:`AveragingPlan` says.

Stackers
--------
``mean``
    Single streaming pass (:class:`~csplugin.engines.stackers.StreamingMean`); memory is two
    particle chunks plus one image.
``median``, ``sigma-rejection``, ``winsorized``
    Order statistics need every particle of a pixel at once. Each class's aligned images are
    spilled once to an unnamed temporary float32 file in OUTDIR, laid out tile-major (pixel
    tile ``j`` of all ``n`` particles is one contiguous block), and read back one tile at a
    time by :func:`~csplugin.engines.stackers.stack_in_tiles`. Cost: particles are read and aligned
    exactly once; the file is written once and read once, sequentially. Temporary disk:
    ``4 n N²`` bytes for the largest class (removed as soon as the class is done, and by
    the OS if the process dies). Memory: one tile (``tile_bytes``, default 32 MiB) times the
    stacker's working-set factor (2x mean ... 8x weighted order statistics, see
    :func:`~csplugin.engines.stackers.stack_in_tiles`), plus the particle chunks.

Weights
-------
``none`` (all 1) or ``posterior``: ``class_posterior`` (cryoSPARC
``alignments2D/class_posterior``, RELION ``rlnMaxValueProbDistribution``).

CTF
---
The CTF belongs to the raw particle frame; after aligning by θ it is rendered in the aligned
frame with ``ctf_2d(..., rotation_deg=degrees(θ))`` (translations do not change it).

``phase-flip``
    Each aligned particle's Fourier transform is multiplied by ``sign(CTF)``, then stacked
    with any stacker. CTF-premultiplied particles (RELION ``rlnCtfDataAreCtfPremultiplied``)
    already carry ``CTF² ≥ 0`` and are left unchanged.
``wiener``
    ``Σ w CTF F / (Σ w CTF² + 1/SNR)`` (:class:`~csplugin.engines.ctf.WienerAccumulator`; for
    premultiplied particles the numerator is ``Σ w F``); mean stacker only. ``SNR`` is the
    per-particle signal-to-noise ratio per Fourier pixel. If not given it is estimated per
    class by :func:`estimate_snr`: the class is split into two halves (alternate particles),
    each half is CTF-corrected (``Σ CTF F / Σ CTF²``), and their Fourier ring correlation
    gives the per-particle spectral SNR ``SNR(r) = FRC/(1 - FRC) / D_half(r)`` (``D_half``:
    ring mean of a half's ``Σ w CTF²``); the scalar used is total signal over total noise in
    the band where the halves agree (rings 1 .. before the first FRC < 0.143), i.e. the
    Fourier-pixel-weighted mean of ``SNR(r)`` there. Without such a band (e.g. one particle)
    :data:`FALLBACK_SNR` is used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from csplugin.core import conventions as cv
from csplugin.core.images import reader, task_images
from csplugin.core.memory import scratch
from csplugin.core.particles import ParticleTable
from csplugin.core.threads import ordered_map
from csplugin.engines.ctf import CTFParams, WienerAccumulator, ctf_2d, phase_flip
from csplugin.engines.spill import TileSpill
from csplugin.engines.stackers import (
    ImageStacker,
    MeanImageStacker,
    MedianImageStacker,
    SigmaRejectionImageStacker,
    StreamingMean,
    WinsorizedImageStacker,
    stack_in_tiles,
)
from csplugin.engines.transform import INTERPOLATIONS, align_images
from formats import InputError
from formats.mrc import Stack

STACKERS: tuple[str, ...] = ("mean", "median", "sigma-rejection", "winsorized")
WEIGHTS: tuple[str, ...] = ("none", "posterior")
CTF_MODES: tuple[str, ...] = ("none", "phase-flip", "wiener")
#: Per-particle SNR used by ``wiener`` when a class gives no usable estimate.
FALLBACK_SNR = 1.0
#: FRC threshold that ends the band used by :func:`estimate_snr`.
FRC_THRESHOLD = 0.143
T = TypeVar("T")
_CTF_REQUIRED = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast")
_CTF_BYTES = 16 << 20  # one (k, N, N//2+1) float64 CTF stack per CTF chunk


@dataclass(frozen=True)
class AveragingPlan:
    """How every class of one run is averaged by :func:`average_class`.

    Attributes
    ----------
    stacker
        Per-pixel stacker, or None for the streaming mean (and for Wiener).
    ctf
        ``"none"``, ``"phase-flip"`` or ``"wiener"``.
    snr
        Per-particle Wiener SNR; None estimates it per class.
    interpolation
        ``"cubic"`` or ``"linear"``.
    chunk_size
        Particles read and aligned at a time.
    tile_bytes
        Order statistics: bytes of one float32 pixel tile of all particles of a class.
    spill_dir
        Where order statistics spill a class's aligned images (unnamed temporary file).
    pixel_size, box
        Å/px and N of the particles.
    """

    stacker: ImageStacker | None
    ctf: str
    snr: float | None
    interpolation: str
    chunk_size: int
    tile_bytes: int
    spill_dir: Path
    pixel_size: float
    box: int

    @classmethod
    def create(cls, table: ParticleTable, stacker: ImageStacker | None, *, ctf: str = "none",
               snr: float | None = None, interpolation: str = "cubic",
               chunk_size: int | None = None, tile_bytes: int = 32 << 20,
               spill_dir: str | Path | None = None) -> AveragingPlan:
        """A plan for ``table`` (one pixel and box size), with the default chunk size of
        :func:`csplugin.jobs.class_averages.class_averages` and ``spill_dir`` defaulting to
        the system temporary directory.
        A :class:`~csplugin.engines.stackers.MeanImageStacker` becomes the streaming mean (same
        result, bounded memory)."""
        box = table.box()
        if type(stacker) is MeanImageStacker:
            stacker = None
        return cls(stacker, ctf, snr, interpolation,
                   chunk_size or (min(_ctf_chunk(box), task_images(box, arrays=4))
                                  if ctf != "none" else task_images(box)),
                   tile_bytes, Path(spill_dir or tempfile.gettempdir()), table.pixel_size(), box)


def check_options(stacker: str, sigma: float, percentile: float, weights: str, ctf: str,
                  wiener_snr: float | None, interpolation: str) -> None:
    """Refuse bad ``--stacker/--sigma/--percentile/--weights/--ctf/--wiener-snr/--interpolation``
    values (InputError)."""
    for name, value, allowed in (("--stacker", stacker, STACKERS), ("--weights", weights, WEIGHTS),
                                 ("--ctf", ctf, CTF_MODES),
                                 ("--interpolation", interpolation, INTERPOLATIONS)):
        if value not in allowed:
            raise InputError(None, f"unknown {name} {value!r}",
                             f"choose one of {', '.join(allowed)}")
    if ctf == "wiener" and stacker != "mean":
        raise InputError(None, f"--ctf wiener is a weighted mean in Fourier space; it cannot "
                         f"use --stacker {stacker}", "use --stacker mean, or --ctf phase-flip")
    if not sigma > 0:
        raise InputError(None, f"--sigma {sigma} must be positive", "e.g. --sigma 3")
    if not 0 <= percentile < 0.5:
        raise InputError(None, f"--percentile {percentile} must be in [0, 0.5)", "e.g. 0.1")
    if wiener_snr is not None and not (wiener_snr > 0 and np.isfinite(wiener_snr)):
        raise InputError(None, f"--wiener-snr {wiener_snr} must be positive",
                         "give e.g. 0.1, or leave it out to estimate it")


def particle_weights(table: ParticleTable, weights: str) -> np.ndarray:
    """Per-particle weights ``(n,)`` float64: ones, or ``class_posterior``.

    Raises
    ------
    InputError
        ``posterior`` but some particles have no (finite, non-negative) posterior.
    """
    if weights == "none":
        return np.ones(len(table))
    post = table.particles["class_posterior"].to_numpy(np.float64)
    bad = ~(np.isfinite(post) & (post >= 0))
    if bad.any():
        raise InputError(table.source, f"has no class posterior for {bad.sum()} of {len(post)} "
                         "particles (alignments2D/class_posterior or rlnMaxValueProbDistribution)",
                         "use --weights none")
    return post


def check_ctf(table: ParticleTable) -> None:
    """Refuse (InputError) a table whose particles lack any CTF parameter a CTF mode needs."""
    p = table.particles
    for column in _CTF_REQUIRED:
        missing = ~np.isfinite(p[column].to_numpy(np.float64))
        if missing.any():
            raise InputError(table.source, f"has no CTF parameter '{column}' for {missing.sum()} "
                             f"of {len(p)} particles", "use --ctf none, or pass the particles "
                             "with their CTF (for .cs: the passthrough file)")


def make_stacker(name: str, sigma: float = 3.0, percentile: float = 0.1) -> ImageStacker | None:
    """The stacker named by ``--stacker`` (None: the streaming mean)."""
    return {"mean": None, "median": MedianImageStacker(),
            "sigma-rejection": SigmaRejectionImageStacker(sigma),
            "winsorized": WinsorizedImageStacker(percentile)}[name]


def _ctf_chunk(box: int) -> int:
    return max(1, _CTF_BYTES // (8 * box * (box // 2 + 1)))


def average_class(table: ParticleTable, stacks: dict[str, Stack], w: np.ndarray,
                  plan: AveragingPlan,
                   progress: Callable[[int], None] | None) -> tuple[np.ndarray, float]:
    """One class's average ``(N, N)`` and the Wiener SNR used (NaN without Wiener)."""
    chunks: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = _prepared_chunks(
        table, stacks, plan, progress)
    if plan.ctf == "wiener":
        halves = (WienerAccumulator(plan.box), WienerAccumulator(plan.box))
        premultiplied = table.particles["ctf_premultiplied"].to_numpy(bool)
        for rows, images, ctfs in chunks:
            for half in (0, 1):
                for flag in (False, True):
                    m = (rows % 2 == half) & (premultiplied[rows] == flag)
                    if m.any():
                        halves[half].add(images[m], ctfs[m], w[rows[m]], premultiplied=flag)
        snr = plan.snr if plan.snr is not None else estimate_snr(*halves)
        return halves[0].merge(halves[1]).result(snr), snr
    if plan.stacker is None:  # each worker adds up its own chunk; the parts in table order
        def part(rows: np.ndarray, images: np.ndarray, _: object) -> StreamingMean:
            mine = StreamingMean()
            mine.add(images, w[rows])
            return mine

        mean = StreamingMean()
        for mine in _prepared_chunks(table, stacks, plan, progress, then=part):
            mean.merge(mine)
        return mean.result(), np.nan
    n, n_pixels = len(table), plan.box * plan.box
    with TileSpill(n, n_pixels, plan.tile_bytes, plan.spill_dir) as spill:
        for rows, images, _ in chunks:
            spill.write(int(rows[0]), images.reshape(len(rows), n_pixels))
        weights = None if np.all(w == w[0]) else w  # uniform: the stackers' fast paths
        return stack_in_tiles(spill.read, n, (plan.box, plan.box), plan.stacker, weights,
                              plan.tile_bytes), np.nan


def _prepared_chunks(table: ParticleTable, stacks: dict[str, Stack], plan: AveragingPlan,
                     progress: Callable[[int], None] | None,
                     then: Callable[[np.ndarray, np.ndarray, np.ndarray | None], T] | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]] | Iterator[T]:
    """Yield ``(rows, images, ctfs)`` in table order: aligned (and, for phase-flip, flipped)
    images ``(k, N, N)`` and, for Wiener, their CTFs in the aligned frame ``(k, N, N//2+1)``;
    with ``then``, ``then(rows, images, ctfs)`` instead (computed with the chunk).

    Chunks are read and prepared by :func:`csplugin.core.threads.ordered_map` worker threads
    (each reads its own chunk and runs the kernels on one thread), so reading, aligning and
    ``then`` use every core. Particles with a true optional ``mirror`` column are mirrored
    (:func:`~csplugin.core.conventions.mirror_y`) before they are aligned."""
    p = table.particles
    angles, shifts = table.alignments()
    premultiplied = p["ctf_premultiplied"].to_numpy(bool)
    mirror = p["mirror"].to_numpy(bool) if "mirror" in p else np.zeros(len(p), bool)
    read = reader(table, stacks)
    size = plan.chunk_size

    def prepare(start: int) -> tuple[np.ndarray, object]:
        rows = np.arange(start, min(start + size, len(table)))
        shape = (len(rows), plan.box, plan.box)
        # with `then` the images stay in the worker: its scratch buffers serve every chunk
        raw = read(rows, None if then is None else scratch("raw", shape))
        if mirror[rows].any():
            raw[mirror[rows]] = cv.mirror_y(raw[mirror[rows]])
        images = align_images(raw, angles[rows], shifts[rows], plan.interpolation,
                              out=None if then is None else scratch("aligned", shape))
        ctfs = None
        if plan.ctf != "none":
            ctfs = aligned_ctfs(p.iloc[rows], plan.box, plan.pixel_size)
        if plan.ctf == "phase-flip":
            flip = ~premultiplied[rows]
            if flip.any():
                images[flip] = phase_flip(images[flip], ctfs[flip])
        return rows, (images, ctfs) if then is None else then(rows, images, ctfs)

    for rows, result in ordered_map(prepare, range(0, len(table), size)):
        yield (rows, *result) if then is None else result  # type: ignore[misc]
        if progress is not None:
            progress(len(rows))


def aligned_ctfs(particles: pd.DataFrame, box: int, pixel_size: float) -> np.ndarray:
    """CTFs ``(k, N, N//2+1)`` float64 (rfft layout) of particles in their aligned frame.

    The CTF of the raw image, rotated with the image by θ = ``angle``:
    ``ctf_2d(..., rotation_deg=degrees(θ))``. Missing phase shift and B-factor count as 0,
    a missing scale as 1. A particle mirrored before alignment (optional ``mirror`` column)
    has its astigmatism angle negated first (:func:`~csplugin.core.conventions.mirror_y`).
    """
    ctf = CTFParams.from_columns(particles)
    if "mirror" in particles:
        mirrored = particles["mirror"].to_numpy(bool)
        ctf = replace(ctf, defocus_angle=np.where(mirrored, -ctf.defocus_angle, ctf.defocus_angle))
    return ctf_2d(box, pixel_size, ctf, rotation_deg=np.rad2deg(particles["angle"].to_numpy()),
                  rfft=True)


def estimate_snr(half_a: WienerAccumulator, half_b: WienerAccumulator) -> float:
    """Per-particle SNR (per Fourier pixel) of a class from two half-set Wiener sums.

    Each half is CTF-corrected, ``X_h = Σ w CTF F / Σ w CTF²``; in ring ``r`` (Fourier
    pixels, rfft layout, Hermitian pairs counted twice) the halves' correlation ``FRC(r)``
    (clipped to [0, 0.999]) gives ``SNR(r) = FRC/(1 - FRC) / D(r)``, ``D(r)`` the ring mean
    of ``(D_a + D_b)/2``, ``D_h = Σ w CTF²`` (exact for unit weights, whose half-set noise is
    ``σ²/D_h``). Returned: the pixel-weighted mean of ``SNR(r)`` over rings 1 .. up to
    the first ring with ``FRC < 0.143`` (total signal / total noise in that band), or
    :data:`FALLBACK_SNR` when ring 1 is already below the threshold.
    """
    num_a, den_a = half_a.numerator, half_a.denominator
    num_b, den_b = half_b.numerator, half_b.denominator
    box = half_a.box
    with np.errstate(divide="ignore", invalid="ignore"):
        xa = np.where(den_a > 0, num_a / den_a, 0)
        xb = np.where(den_b > 0, num_b / den_b, 0)
    ring = np.rint(np.hypot(np.fft.fftfreq(box)[:, None], np.fft.rfftfreq(box)[None, :])
                   * box).astype(np.int64)
    pairs = np.full(ring.shape, 2.0)
    pairs[:, 0] = 1.0
    if box % 2 == 0:
        pairs[:, -1] = 1.0
    inside = ring <= box // 2

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring[inside], (pairs * values)[inside], minlength=box // 2 + 1)

    pixels = ring_sum(np.ones(ring.shape))
    power = np.sqrt(ring_sum(np.abs(xa) ** 2) * ring_sum(np.abs(xb) ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        frc = np.where(power > 0, ring_sum((xa * np.conj(xb)).real) / power, 0.0)
    frc = np.clip(frc, 0.0, 0.999)
    below = np.flatnonzero(frc[1:] < FRC_THRESHOLD)
    last = (below[0] if below.size else len(frc) - 1) + 1  # rings 1 .. last-1 resolved
    if last <= 1:
        return FALLBACK_SNR
    band = slice(1, last)
    d_half = ring_sum((den_a + den_b) / 2)[band] / pixels[band]
    snr = frc[band] / (1 - frc[band]) / d_half
    return float((pixels[band] * snr).sum() / pixels[band].sum())
