"""Class averages rebuilt from the stored 2D alignments: ``csplugin class-averages``.

:func:`class_averages` takes a :class:`~csplugin.core.particles.ParticleTable` (select classes
beforehand with :meth:`~csplugin.core.particles.ParticleTable.select_classes`) and, for each
class in ascending class number, aligns its particles with :func:`csplugin.engines.transform.align_images` (the aligned image is
``A(q) = P(R(-θ) q - s)``, see :mod:`csplugin.core.conventions`) and stacks them.

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

Outputs in OUTDIR
-----------------
``class_averages.mrcs``
    Slice ``i`` = ``i``-th class in ascending class number; voxel size = pixel size.
``class_averages.cs``
    cryoSPARC class-averages layout (``blob`` slot: ``uid``, ``blob/path`` =
    ``class_averages.mrcs`` relative to OUTDIR, ``blob/idx`` = slice, ``blob/shape``,
    ``blob/psize_A``), plus ``alignments2D/class`` (class in cryoSPARC numbering, 0-based)
    and ``alignments2D/num_particles``. ``uid`` = the 0-based class. cryoSPARC's own
    ``J##_class_averages.cs`` has no class field (its Select 2D takes ``blob/idx`` as the
    class), so that reading holds only when every class from 0 is written.
    ``blob/res_A`` is not written (no resolution is computed).
``class_averages.star``
    RELION ``data_model_classes``: ``rlnReferenceImage`` (``k@stack``, 1-based slice;
    the stack path follows export-aligned's rule: relative to the current directory when
    OUTDIR is below it, else absolute), ``rlnClassNumber`` (1-based RELION numbering),
    ``rlnClassDistribution`` (fraction of the averaged particles) and
    ``rlnClassParticleCount`` (particle count; RELION has no standard label for it, RELION
    3.1+ reads and keeps unknown labels).
``class_averages.png``
    Montage, each tile titled with the class number (input numbering) and particle count.
``compare.csv`` (with ``compare``)
    Pearson correlation, inside the inscribed disc, of each rebuilt average with slice
    ``class_index`` (0-based) of the given averages: cryoSPARC's ``J##_class_averages.mrc``
    (slice k = class k) and RELION's ``_classes.mrcs`` (slice k-1 = class k) alike.

Every output is written atomically; existing outputs are refused without ``overwrite`` and a
failed run leaves none of its files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from csplugin.core import conventions as cv
from csplugin.core.images import check_stacks, chunk_size_for, iter_chunks
from csplugin.core.particles import ParticleTable
from csplugin.engines.ctf import WienerAccumulator, ctf_2d, phase_flip
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
from csplugin.jobs import figures
from csplugin.jobs.export_aligned import prepare_outdir, relion_path
from csplugin.jobs.runners import SerialRunner, TaskRunner, task_table, used_stacks
from formats import InputError
from formats.atomic import atomic_output
from formats.cs import encode, write_cs
from formats.mrc import Stack, open_stack, write_stack
from formats.star import join_image_names, write_star

STACKERS: tuple[str, ...] = ("mean", "median", "sigma-rejection", "winsorized")
WEIGHTS: tuple[str, ...] = ("none", "posterior")
CTF_MODES: tuple[str, ...] = ("none", "phase-flip", "wiener")
#: Per-particle SNR used by ``wiener`` when a class gives no usable estimate.
FALLBACK_SNR = 1.0
#: FRC threshold that ends the band used by :func:`estimate_snr`.
FRC_THRESHOLD = 0.143
#: Label for the particle count in class_averages.star (RELION has none).
COUNT_LABEL = "rlnClassParticleCount"
_CTF_REQUIRED = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast")
_CTF_BYTES = 16 << 20  # one (k, N, N//2+1) float64 CTF stack per CTF chunk


@dataclass(frozen=True)
class ClassAveragesResult:
    """What :func:`class_averages` computed and wrote.

    Attributes
    ----------
    mrcs, cs, star, png
        The output files.
    classes
        ``(k,)`` class numbers in the input's numbering, ascending (slice order).
    counts
        ``(k,)`` particles averaged per class.
    averages
        ``(k, N, N)`` float32, as written to ``mrcs``.
    snr
        ``(k,)`` per-particle SNR used by ``ctf="wiener"``, else None.
    comparison
        With ``compare``: columns ``class``, ``slice``, ``particles``, ``correlation``.
    compare_csv
        ``compare.csv`` with that table, or None.
    """

    mrcs: Path
    cs: Path
    star: Path
    png: Path
    classes: np.ndarray
    counts: np.ndarray
    averages: np.ndarray
    snr: np.ndarray | None = None
    comparison: pd.DataFrame | None = None
    compare_csv: Path | None = None


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
        :func:`class_averages` and ``spill_dir`` defaulting to the system temporary directory.
        A :class:`~csplugin.engines.stackers.MeanImageStacker` becomes the streaming mean (same
        result, bounded memory)."""
        box = table.box()
        if type(stacker) is MeanImageStacker:
            stacker = None
        return cls(stacker, ctf, snr, interpolation,
                   chunk_size or (_ctf_chunk(box) if ctf != "none" else chunk_size_for(box)),
                   tile_bytes, Path(spill_dir or tempfile.gettempdir()), table.pixel_size(), box)


def class_averages(table: ParticleTable, outdir: str | Path, *, stacker: str = "mean",
                   sigma: float = 3.0, percentile: float = 0.1, weights: str = "none",
                   ctf: str = "none", wiener_snr: float | None = None,
                   invert_contrast: bool = False, interpolation: str = "cubic",
                   compare: str | Path | None = None, overwrite: bool = False,
                   chunk_size: int | None = None, tile_bytes: int = 32 << 20,
                   progress: Callable[[int], None] | None = None,
                   runner: TaskRunner | None = None) -> ClassAveragesResult:
    """Rebuild the class averages of ``table`` from its stored alignments; write them to ``outdir``.

    Parameters
    ----------
    table
        Particles with classes (``class_index >= 0``; others are ignored). Every class
        present is averaged; select with :meth:`~csplugin.core.particles.ParticleTable.select_classes` first.
    outdir
        Output directory (created if needed); outputs listed in the module docstring.
    stacker
        ``"mean"``, ``"median"``, ``"sigma-rejection"`` or ``"winsorized"``.
    sigma
        Rejection threshold (standard deviations) of ``sigma-rejection``.
    percentile
        Fraction clipped at each end by ``winsorized``, in [0, 0.5).
    weights
        ``"none"`` or ``"posterior"`` (``class_posterior``; must be present).
    ctf
        ``"none"``, ``"phase-flip"`` or ``"wiener"`` (mean stacker only).
    wiener_snr
        Per-particle SNR of the Wiener filter (> 0); None estimates it per class
        (:func:`estimate_snr`).
    invert_contrast
        Negate the averages (for order statistics the same as negating the particles).
    interpolation
        ``"cubic"`` or ``"linear"`` (:func:`csplugin.engines.transform.align_images`).
    compare
        An MRC stack of class averages from the same job; slice = 0-based class index.
    overwrite
        Replace existing outputs in ``outdir``.
    chunk_size
        Particles read and aligned at a time (default
        :func:`csplugin.core.images.chunk_size_for` the box; with CTF, as many as keep one
        ``(k, N, N//2+1)`` float64 CTF stack within 16 MiB).
    tile_bytes
        Order statistics: bytes of one float32 pixel tile of all particles of a class.
    progress
        Called with the number of particles finished after each chunk.
    runner
        Where each class is averaged (:func:`average_class`, one task per class): here
        (None) or e.g. on a Dask cluster (:mod:`csplugin.app.dask`); same result.

    Raises
    ------
    InputError
        Bad option, no classified particles, mixed pixel or box sizes, missing posteriors or
        CTF parameters, missing stacks, a ``compare`` stack that does not fit, existing
        outputs. Nothing is written then.
    """
    check_options(stacker, sigma, percentile, weights, ctf, wiener_snr, interpolation)
    outdir = Path(outdir)
    classified = table.particles["class_index"].to_numpy() >= 0
    if not classified.any():
        raise InputError(table.source, "has no 2D class assignments (alignments2D/class or "
                         "rlnClassNumber)", "pass the particles of a 2D classification job")
    table = table.take(classified)
    pixel_size, box = table.pixel_size(), table.box()
    w = particle_weights(table, weights)
    if ctf != "none":
        check_ctf(table)
    table.require_alignments()
    stacks = check_stacks(table)
    index = table.particles["class_index"].to_numpy()
    class_index = np.unique(index)
    given = _open_compare(compare, class_index, box) if compare is not None else None
    for k in class_index:
        if w[index == k].sum() <= 0:
            raise InputError(table.source, f"class {cv.to_base(k, table.class_base)}: the "
                             "particle weights sum to zero", "use --weights none")
    names = output_paths(outdir)
    products = [*names.values()] + ([outdir / "compare.csv"] if given is not None else [])
    prepare_outdir(outdir, products, overwrite)

    plan = AveragingPlan.create(table, make_stacker(stacker, sigma, percentile), ctf=ctf,
                                snr=wiener_snr, interpolation=interpolation,
                                chunk_size=chunk_size, tile_bytes=tile_bytes, spill_dir=outdir)
    averages = np.empty((len(class_index), box, box), np.float32)
    snrs = np.empty(len(class_index))
    members = [np.flatnonzero(index == k) for k in class_index]
    tasks = ((task_table(table, rows), used_stacks(table, rows, stacks), w[rows], plan)
             for rows in members)
    results = (runner or SerialRunner()).map(average_class, tasks, map(len, members), progress)
    for i, (average, snr) in enumerate(results):
        averages[i], snrs[i] = average, snr
    if invert_contrast:
        averages *= -1
    counts = np.bincount(index, minlength=class_index.max() + 1)[class_index]
    numbers = cv.to_base(class_index, table.class_base)
    comparison = None
    if given is not None:
        comparison = pd.DataFrame({
            "class": numbers, "slice": class_index, "particles": counts,
            "correlation": [correlation(a, b) for a, b in
                            zip(averages, given.read(class_index))]})
    write_averages(names, averages, class_index, counts, table.class_base, pixel_size,
                   comparison=comparison)
    return ClassAveragesResult(
        names["mrcs"], names["cs"], names["star"], names["png"], numbers, counts, averages,
        snrs if ctf == "wiener" else None, comparison,
        outdir / "compare.csv" if comparison is not None else None)


# ------------------------------------------------------------------------------------ checks
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
    p = table.particles
    for column in _CTF_REQUIRED:
        missing = ~np.isfinite(p[column].to_numpy(np.float64))
        if missing.any():
            raise InputError(table.source, f"has no CTF parameter '{column}' for {missing.sum()} "
                             f"of {len(p)} particles", "use --ctf none, or pass the particles "
                             "with their CTF (for .cs: the passthrough file)")


def _open_compare(path: str | Path, class_index: np.ndarray, box: int) -> Stack:
    stack = open_stack(path)
    if stack.box != (box, box):
        raise InputError(path, f"holds {stack.box} images, the particles are {box} px",
                         "compare with the class averages of the same job")
    if class_index.max() >= stack.n:
        raise InputError(path, f"has {stack.n} images but class index {class_index.max()} "
                         "(0-based) is averaged", "compare with the class averages of the same job")
    return stack


def make_stacker(name: str, sigma: float = 3.0, percentile: float = 0.1) -> ImageStacker | None:
    """The stacker named by ``--stacker`` (None: the streaming mean)."""
    return {"mean": None, "median": MedianImageStacker(),
            "sigma-rejection": SigmaRejectionImageStacker(sigma),
            "winsorized": WinsorizedImageStacker(percentile)}[name]


def _ctf_chunk(box: int) -> int:
    return max(1, _CTF_BYTES // (8 * box * (box // 2 + 1)))


# --------------------------------------------------------------------------------- averaging
def average_class(table: ParticleTable, stacks: dict[str, Stack], w: np.ndarray, plan: AveragingPlan,
                   progress: Callable[[int], None] | None) -> tuple[np.ndarray, float]:
    """One class's average ``(N, N)`` and the Wiener SNR used (NaN without Wiener)."""
    chunks = _prepared_chunks(table, stacks, plan, progress)
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
    if plan.stacker is None:
        mean = StreamingMean()
        for rows, images, _ in chunks:
            mean.add(images, w[rows])
        return mean.result(), np.nan
    n, n_pixels = len(table), plan.box * plan.box
    with _TileSpill(n, n_pixels, plan.tile_bytes, plan.spill_dir) as spill:
        for rows, images, _ in chunks:
            spill.write(int(rows[0]), images.reshape(len(rows), n_pixels))
        weights = None if np.all(w == w[0]) else w  # uniform: the stackers' fast paths
        return stack_in_tiles(spill.read, n, (plan.box, plan.box), plan.stacker, weights,
                              plan.tile_bytes), np.nan


def _prepared_chunks(table: ParticleTable, stacks: dict[str, Stack], plan: AveragingPlan,
                     progress: Callable[[int], None] | None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield ``(rows, images, ctfs)``: aligned (and, for phase-flip, flipped) images
    ``(k, N, N)`` and, for Wiener, their CTFs in the aligned frame ``(k, N, N//2+1)``.

    Particles with a true optional ``mirror`` column are mirrored (:func:`~csplugin.
    conventions.mirror_y`) before they are aligned."""
    p = table.particles
    angles, shifts = p["angle"].to_numpy(), p[["shift_x", "shift_y"]].to_numpy()
    premultiplied = p["ctf_premultiplied"].to_numpy(bool)
    mirror = p["mirror"].to_numpy(bool) if "mirror" in p else np.zeros(len(p), bool)
    for rows, raw in iter_chunks(table, plan.chunk_size, stacks):
        if mirror[rows].any():
            raw[mirror[rows]] = cv.mirror_y(raw[mirror[rows]])
        images = align_images(raw, angles[rows], shifts[rows], plan.interpolation)
        ctfs = None
        if plan.ctf != "none":
            ctfs = aligned_ctfs(p.iloc[rows], plan.box, plan.pixel_size)
        if plan.ctf == "phase-flip":
            flip = ~premultiplied[rows]
            if flip.any():
                images[flip] = phase_flip(images[flip], ctfs[flip])
        yield rows, images, ctfs
        if progress is not None:
            progress(len(rows))


def aligned_ctfs(particles: pd.DataFrame, box: int, pixel_size: float) -> np.ndarray:
    """CTFs ``(k, N, N//2+1)`` float64 (rfft layout) of particles in their aligned frame.

    The CTF of the raw image, rotated with the image by θ = ``angle``:
    ``ctf_2d(..., rotation_deg=degrees(θ))``. Missing phase shift and B-factor count as 0,
    a missing scale as 1. A particle mirrored before alignment (optional ``mirror`` column)
    has its astigmatism angle negated first (:func:`~csplugin.core.conventions.mirror_y`).
    """
    p = particles

    def col(name: str, default: float | None = None) -> np.ndarray:
        values = p[name].to_numpy(np.float64)
        return values if default is None else np.nan_to_num(values, nan=default)

    defocus_angle = col("defocus_angle")
    if "mirror" in p:
        defocus_angle = np.where(p["mirror"].to_numpy(bool), -defocus_angle, defocus_angle)
    return ctf_2d(box, pixel_size, col("defocus_u"), col("defocus_v"), defocus_angle,
                  col("voltage"), col("cs"), col("amplitude_contrast"), col("phase_shift", 0.0),
                  col("bfactor", 0.0), col("ctf_scale", 1.0),
                  rotation_deg=np.rad2deg(col("angle")), rfft=True)


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


class _TileSpill:
    """A class's aligned images ``(n, P)`` float32 in an unnamed temporary file, tile-major.

    Pixel tile ``[start, stop)`` of all ``n`` images is one contiguous ``(n, stop - start)``
    block at byte ``4 n start``, with the tiles of :func:`~csplugin.engines.stackers.stack_in_tiles`
    for the same ``n`` and ``tile_bytes`` (``max(1, tile_bytes // (4 n))`` pixels).
    """

    def __init__(self, n: int, n_pixels: int, tile_bytes: int, directory: Path) -> None:
        self.n, self.n_pixels = n, n_pixels
        self.tile = max(1, tile_bytes // (4 * n))
        self._file = tempfile.TemporaryFile(prefix=".csplugin-spill-", dir=directory)

    def __enter__(self) -> _TileSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def write(self, first: int, images: np.ndarray) -> None:
        """Store images ``(k, P)`` as rows ``first .. first + k - 1``."""
        for start in range(0, self.n_pixels, self.tile):
            stop = min(start + self.tile, self.n_pixels)
            block = np.ascontiguousarray(images[:, start:stop], np.float32)
            _pwrite_all(self._file.fileno(), block,
                        4 * (self.n * start + first * (stop - start)))

    def read(self, cols: slice) -> np.ndarray:
        """Pixels ``cols`` (one whole tile) of all images, ``(n, len(cols))`` float32."""
        if cols.start % self.tile or cols.stop != min(cols.start + self.tile, self.n_pixels):
            raise ValueError(f"{cols} is not one of the spill's tiles of {self.tile} pixels")
        out = np.empty((self.n, cols.stop - cols.start), np.float32)
        view, offset = memoryview(out).cast("B"), 4 * self.n * cols.start
        while view:
            got = os.preadv(self._file.fileno(), [view], offset)
            if got <= 0:
                raise OSError(f"temporary spill file ended early at byte {offset}")
            view, offset = view[got:], offset + got
        return out


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


# ------------------------------------------------------------------------------------ output
def output_paths(outdir: Path) -> dict[str, Path]:
    """``{"mrcs", "cs", "star", "png"}`` -> ``outdir/class_averages.<suffix>``."""
    return {s: outdir / f"class_averages.{s}" for s in ("mrcs", "cs", "star", "png")}


def write_averages(names: dict[str, Path], averages: np.ndarray, class_index: np.ndarray,
                   counts: np.ndarray, class_base: int, pixel_size: float, *,
                   comparison: pd.DataFrame | None = None,
                   star_columns: dict[str, np.ndarray] | None = None,
                   cs_fields: dict[str, np.ndarray] | None = None,
                   montage_limit: int | None = None) -> None:
    """Write the outputs listed in the module docstring, all or none.

    Parameters
    ----------
    names
        :func:`output_paths` of the output directory.
    averages
        ``(k, N, N)`` images; slice ``i`` describes class ``class_index[i]`` (0-based).
    counts
        ``(k,)`` particles per average.
    class_base
        The input's class numbering (0 cryoSPARC, 1 RELION), for the montage titles.
    comparison
        Written to ``compare.csv`` beside the averages when given.
    star_columns, cs_fields
        Extra ``(k,)`` columns for ``class_averages.star`` (label -> values) and
        ``class_averages.cs`` (field -> values).
    montage_limit
        At most this many tiles in the PNG montage (default: all).
    """
    box = averages.shape[-1]
    numbers = cv.to_base(class_index, class_base)
    shown = slice(None, montage_limit)
    written: list[Path] = []
    try:
        write_stack(names["mrcs"], averages, pixel_size)
        written.append(names["mrcs"])
        write_cs(names["cs"], _averages_cs(names["mrcs"].name, class_index, counts, box,
                                           pixel_size, cs_fields or {}))
        written.append(names["cs"])
        star = _averages_star(relion_path(names["mrcs"]), class_index, counts)
        for label, values in (star_columns or {}).items():
            star[label] = values
        write_star(names["star"], {"model_classes": star})
        written.append(names["star"])
        figures.montage_png(names["png"], averages[shown], [f"class {c}\n{n:,} ptcls" for c, n in
                                                 zip(numbers[shown], counts[shown])])
        written.append(names["png"])
        if comparison is not None:
            with atomic_output(names["mrcs"].parent / "compare.csv") as tmp:
                comparison.to_csv(tmp, index=False, float_format="%.6f")
    except BaseException:
        for path in written:  # no partial outputs
            path.unlink(missing_ok=True)
        raise


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two ``(N, N)`` images inside the inscribed disc (radius N/2)."""
    n = a.shape[-1]
    y, x = np.mgrid[:n, :n] - n // 2
    disc = x**2 + y**2 < (n / 2) ** 2
    u = a[disc].astype(np.float64) - a[disc].mean()
    v = b[disc].astype(np.float64) - b[disc].mean()
    norm = np.sqrt((u * u).sum() * (v * v).sum())
    return float((u * v).sum() / norm) if norm > 0 else float("nan")


def _averages_cs(stack_name: str, class_index: np.ndarray, counts: np.ndarray, box: int,
                 pixel_size: float, extra: dict[str, np.ndarray]) -> np.ndarray:
    k = len(class_index)
    data = np.zeros(k, dtype=[
        ("uid", "<u8"), ("blob/path", f"S{len(stack_name.encode())}"), ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"), ("alignments2D/class", "<u4"),
        ("alignments2D/num_particles", "<u4"),
        *((name, np.asarray(values).dtype) for name, values in extra.items())])
    for name, values in extra.items():
        data[name] = values
    data["uid"] = class_index
    data["blob/path"] = encode([stack_name] * k)
    data["blob/idx"] = np.arange(k)
    data["blob/shape"] = box
    data["blob/psize_A"] = pixel_size
    data["alignments2D/class"] = cv.to_base(class_index, cv.CRYOSPARC_BASE)
    data["alignments2D/num_particles"] = counts
    return data


def _averages_star(stack_path: str, class_index: np.ndarray, counts: np.ndarray
                   ) -> pd.DataFrame:
    k = len(class_index)
    return pd.DataFrame({
        "rlnReferenceImage": join_image_names(cv.to_base(np.arange(k), cv.RELION_BASE),
                                              np.array([stack_path] * k)),
        "rlnClassNumber": cv.to_base(class_index, cv.RELION_BASE),
        "rlnClassDistribution": counts / counts.sum(),
        COUNT_LABEL: counts,
    })
