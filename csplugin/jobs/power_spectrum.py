"""Averaged power spectra of aligned segments, per class and pooled: the power-spectrum job.

For each selected class the incoherent average ``Σ rot_θ(|F|²) / n`` of its particles is
computed with :class:`csplugin.engines.power_spectrum.PowerSpectrumAccumulator` (one FFT per
particle; spectra summed in fine psi bins and each bin rotated once), and the pooled spectrum
of all selected particles is the sum of the class accumulators. Outputs in ``OUTDIR``:

=============================  ==========================================================
``ps_class{k}.mrc``            spectrum of class k (k in the input's numbering), float32,
                               full plane, zero frequency at ``(M//2, M//2)``, voxel size
                               such that the edge is Nyquist (the particles' pixel size,
                               or resolution/2 after ``crop_resolution``)
``ps_all.mrc``                 pooled spectrum of every selected particle
``ps_camera_frame.mrc``        pooled spectrum of the *unrotated* particles: detector-fixed
                               artefacts show as lines through the centre
``*.png``                      each spectrum on axes in 1/Å (log display) beside its
                               meridian, equator and radial profiles
``*_profiles.csv``             those profiles vs 1/Å
``summary.json``               classes, particle counts, axis angles, options, pixel size
(helical outputs)              ``ps_classes.mrcs``, half sets, ``class_averages.mrcs``,
                               layer lines, candidates, ``index.html``:
                               :mod:`csplugin.jobs.helical_indexing`
=============================  ==========================================================

Orientation (``axis``): ``"vertical"`` (default; HILL, PyHI, SPRING) and ``"horizontal"``
(RELION display, denovo3D) turn each class so that its helical axis lies that way;
``"class"`` keeps the 2D-classification frame. The axis of a class is taken from
``axis_angles`` when given, else from the stored class average (``class_averages``: slice =
0-based class index, as in cryoSPARC's ``J##_class_averages.mrc`` and RELION's
``_classes.mrcs``), else from the average rebuilt in the same pass from the class's aligned
particles (all, or ``helical_indexing.AVERAGE_PARTICLES`` spread over the class; with a
``runner``, the first ``AXIS_PARTICLES``), which is also written, turned and centred like the
spectrum, to ``class_averages.mrcs``; in each case by
:func:`csplugin.engines.filament.filament_axis_angle` (the normal of the strongest central line
of the average's power spectrum, its equator: robust for oblique, thin or wide filaments and
noisy averages).
The pooled spectrum adds the classes *after* each is turned, so with ``vertical`` or
``horizontal`` it pools all segments with their helical axes made parallel.

Memory: each class accumulator holds at most ``180/psi_bin_deg`` bins of ``M (M//2+1)``
float32 (190 MB at box 256, pad 2, 0.5°); classes are processed in groups that fit
``memory_budget`` bytes (192 MB; at least one class), each group in its own pass over only its
particles, so every particle is still read once. The pooled spectrum is the sum of the
classes' rotated ``(M, M)`` sums, so it needs no bins of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from csplugin.core.images import check_stacks, iter_chunks
from csplugin.core.particles import ParticleTable
from csplugin.engines.filament import filament_axis_angle
from csplugin.engines.power_spectrum import (
    PowerSpectrumAccumulator,
    RotatedSums,
    add_spectra,
    axis_rotation,
    crop_to_resolution,
    profiles,
    to_log,
)
from csplugin.engines.transform import align_images
from csplugin.jobs import helical_indexing as helical
from csplugin.jobs.runners import TaskRunner, task_table, used_stacks
from csplugin.outputs import figures
from csplugin.outputs.directory import claim, transaction
from formats import InputError
from formats.atomic import atomic_output
from formats.mrc import Stack, open_stack, write_image

Axis = Literal["class", "vertical", "horizontal"]
#: Particles per class aligned to rebuild an average for the axis estimate.
AXIS_PARTICLES = 500


@dataclass(frozen=True)
class SpectrumOptions:
    """Conditioning and output options (defaults chosen for helical indexing)."""

    pad: int = 2
    mask: bool = True
    normalize: bool = True
    quantity: Literal["power", "amplitude"] = "power"
    log: bool = False
    crop_resolution: float | None = None
    suppress_detector_lines: bool = True
    psi_bin_deg: float = 0.5
    axis: Axis = "vertical"
    #: Filament mask instead of the circle: width in Å of a soft rectangle along the axis.
    filament_width: float | None = None
    #: Half-set spectra split by filament (csplugin.jobs.helical_indexing.filament_halves).
    half_sets: bool = True
    #: Detect layer lines and rank helical symmetry candidates per class.
    index: bool = True
    #: Radius range (Å) of the helix's subunits; default: from the class average's width.
    helix_radius: tuple[float, float] | None = None
    #: Largest cyclic symmetry tried by the indexing.
    max_csym: int = 6
    #: Resolution (Å) at the edge of the displayed spectra; default: where the lines end.
    display_resolution: float | None = None


@dataclass
class SpectrumResult:
    """What :func:`power_spectra` wrote and measured."""

    outdir: Path
    classes: dict[int, int]  # class number (input numbering) -> particles
    axis_angles_deg: dict[int, float] = field(default_factory=dict)
    pixel_size: float = 0.0
    header_pixel_size: float = 0.0


@transaction()  # the result replaces OUTDIR's previous one on return, or nothing changes
def power_spectra(table: ParticleTable, outdir: str | Path,
                  options: SpectrumOptions = SpectrumOptions(),
                  *, class_averages: str | Path | None = None,
                  axis_angles: dict[int, float] | None = None, overwrite: bool = False,
                  memory_budget: int = 192 << 20,
                  progress: Callable[[int], None] | None = None,
                  runner: TaskRunner | None = None,
                  block_particles: int = 10_000) -> SpectrumResult:
    """Compute and write per-class and pooled averaged power spectra.

    Parameters
    ----------
    table
        Selected particles; all of one pixel size and box.
    outdir
        Output directory (created if needed).
    options
        See :class:`SpectrumOptions`.
    class_averages
        Stored class averages (MRC stack, slice = 0-based class index) for the axis.
    axis_angles
        Helical axis direction per class number (input numbering), degrees from +x toward
        +y (rows); overrides the estimate.
    memory_budget
        Bytes of psi-bin sums held at once (classes are grouped to fit).
    progress
        Called with the number of particles finished after each chunk.
    runner
        None: grouped passes here (above). Else each class is cut into blocks of whole psi
        bins of about ``block_particles`` particles, each block one task of ``runner``
        (:func:`spectrum_block`, e.g. on a Dask cluster) returning its bins rotated and
        summed; a class's blocks add up to its sums. Bin sums are those of the local run
        bit for bit; the spectra differ only by the order of the float sums over bins.
    block_particles
        Particles per task with a ``runner``.
    """
    outdir = Path(outdir)
    table.require_alignments()
    stacks = check_stacks(table)
    pixel_size, box = table.pixel_size(), table.box()
    if options.crop_resolution is not None and options.crop_resolution < 2 * pixel_size:
        raise InputError(None, f"--crop-resolution {options.crop_resolution} Å is finer than "
                         f"Nyquist ({2 * pixel_size:.3f} Å)",
                         "give a resolution of at least 2 x pixel size")
    numbers = table.class_numbers()
    has_classes = (table.particles["class_index"] >= 0).all()
    labels = np.unique(numbers) if has_classes else np.array([], np.int64)
    names = [f"ps_class{k}" for k in labels] + ["ps_all", "ps_camera_frame"]
    out = claim(outdir, [f"{n}.mrc" for n in names] + ["summary.json"], job="power-spectrum",
                overwrite=overwrite)
    final_outdir, outdir = outdir, out.staging  # every file below goes into the staging dir
    stored = _stored_averages(class_averages, table, labels, box)
    acc_bytes = (180 / options.psi_bin_deg) * (options.pad * box) * (options.pad * box // 2 + 1) * 4
    acc_bytes *= 2 if options.half_sets else 1  # two accumulators (half sets) per class
    per_pass = max(1, int(memory_budget // acc_bytes))
    keys: list[int | None] = [int(k) for k in labels] or [None]  # None: unclassified input
    if runner is None:
        class_sums = _grouped_passes(table, stacks, keys, stored, axis_angles, options, per_pass,
                                     progress)
    else:
        class_sums = _block_tasks(table, stacks, keys, stored, axis_angles, options,
                                  block_particles, runner, progress)
    pooled: RotatedSums | None = None
    spectra: dict[str, np.ndarray] = {}
    axis_deg: dict[int, float] = {}
    helix: list[tuple[int, float | None, np.ndarray, helical.ClassExtras]] = []
    for k, angle, sums, extras in class_sums:  # in class order
        if angle is not None:
            axis_deg[k] = float(np.rad2deg(angle))
        if k is not None:
            spectra[f"ps_class{k}"] = sums.spectrum()
            helix.append((k, angle, spectra[f"ps_class{k}"], extras))
        pooled = sums if pooled is None else pooled + sums
    assert pooled is not None
    spectra["ps_all"] = pooled.spectrum()
    spectra["ps_camera_frame"] = pooled.camera_frame()
    # the class PNGs (average | spectrum with layer lines | profiles) come from helical_outputs
    header_pixel = _write_outputs(outdir, spectra, pixel_size, options,
                                  skip_png={f"ps_class{k}" for k, *_ in helix})
    counts = {int(k): int(np.sum(numbers == k)) for k in labels}
    result = SpectrumResult(final_outdir, counts, axis_deg, pixel_size, header_pixel)
    summary = {"input": str(table.source), "particles": len(table),
               "class_numbering": "0-based" if table.class_base == 0 else "1-based",
               "classes": counts, "axis_angles_deg": axis_deg, "pixel_size_A": pixel_size,
               "header_pixel_size_A": header_pixel, "box": box,
               "spectrum_size": int(spectra["ps_all"].shape[0]), "options": asdict(options)}
    if helix:
        summary.update(helical.helical_outputs(outdir, helix, pixel_size, box, options,
                                               helical.filament_halves(table)[1], summary))
    with atomic_output(outdir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return result


def _json_default(value: object) -> object:
    """NumPy scalars (and anything else) in summary.json."""
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


ClassSums = Iterator[tuple[int | None, float | None, RotatedSums, "helical.ClassExtras"]]


def _grouped_passes(table: ParticleTable, stacks: dict[str, Stack], keys: list[int | None],
                    stored: dict[int, np.ndarray], given: dict[int, float] | None,
                    options: SpectrumOptions, per_pass: int,
                    progress: Callable[[int], None] | None) -> ClassSums:
    """Yield ``(class, axis angle or None, rotated sums)`` per class, in order, computing
    ``per_pass`` classes per pass over their particles (the local run)."""
    numbers, box = table.class_numbers(), table.box()
    halves = helical.filament_halves(table)[0]
    for first in range(0, len(keys), per_pass):
        group = keys[first:first + per_pass]
        subset = table.take(np.isin(numbers, group)) if group != [None] else table
        accs = {k: _accumulator(box, options) for k in group}  # half 1 with half sets
        seconds = {k: _accumulator(box, options) for k in group} if options.half_sets else {}
        rebuilt: dict[int, tuple[np.ndarray, int]] = {}  # class_averages.mrcs and the axis
        sub_numbers = subset.class_numbers()
        sub_halves = halves[np.isin(numbers, group)] if group != [None] else halves
        masker = helical.filament_masker(subset, stacks, group, given, stored, options)
        chosen = helical.average_rows(sub_numbers)  # the particles of class_averages.mrcs
        for chunk_rows, images in iter_chunks(subset, stacks=stacks):
            angles = subset.particles["angle"].to_numpy()[chunk_rows]
            owners = (np.searchsorted(group, sub_numbers[chunk_rows]) if group != [None]
                      else np.zeros(len(chunk_rows), np.int64))
            if seconds:
                owners = owners + len(group) * sub_halves[chunk_rows]
            add_spectra(list(accs.values()) + list(seconds.values()),  # one FFT per particle
                        masker(images, chunk_rows) if masker else images, angles, owners)
            for k in accs:
                if k is None:
                    continue
                mine = (sub_numbers[chunk_rows] == k) & chosen[chunk_rows]
                if np.any(mine):
                    _rebuild(rebuilt, k, images[mine], subset, chunk_rows[mine], None)
            if progress is not None:
                progress(len(chunk_rows))
        for k, acc in accs.items():
            angle = _axis_angle(k, given, stored, rebuilt, options.axis) if k is not None else None
            rotation = _rotation(angle, options.axis)
            h1 = acc.rotated_sums(rotation) if acc.n else None
            h2 = seconds[k].rotated_sums(rotation) if seconds and seconds[k].n else None
            sums = h2 if h1 is None else (h1 if h2 is None else h1 + h2)
            assert sums is not None
            yield k, angle, sums, helical.ClassExtras(
                h1 if seconds else None, h2, *rebuilt.get(k, (None, 0)))  # type: ignore[arg-type]
        del accs, seconds  # free this group's bins before the next pass


def _block_tasks(table: ParticleTable, stacks: dict[str, Stack], keys: list[int | None],
                 stored: dict[int, np.ndarray], given: dict[int, float] | None,
                 options: SpectrumOptions, block_particles: int, runner: TaskRunner,
                 progress: Callable[[int], None] | None) -> ClassSums:
    """Like :func:`_grouped_passes`, as ``runner`` tasks: axis averages first (where the
    axis is needed, unknown and not stored), then blocks of whole psi bins per class."""
    numbers, box = table.class_numbers(), table.box()
    members = {k: np.flatnonzero(numbers == k) if k is not None else np.arange(len(table))
               for k in keys}
    if options.filament_width is not None:
        raise InputError(None, "the filament mask runs in one process",
                         "drop --scheduler/--workers or use the circular mask")
    missing = [k for k in keys if k is not None]  # also for class_averages.mrcs
    firsts = [members[k][:AXIS_PARTICLES] for k in missing]
    rebuilt = dict(zip(missing, runner.map(
        rebuilt_average, ((task_table(table, r), used_stacks(table, r, stacks)) for r in firsts),
        [0] * len(firsts))))  # these particles count once, in their block
    angles = {k: _axis_angle(k, given, stored, rebuilt, options.axis) if k is not None else None
              for k in keys}
    halves = helical.filament_halves(table)[0] if options.half_sets else np.zeros(len(table),
                                                                                  np.int64)
    blocks: list[tuple[int | None, int, np.ndarray]] = []  # (class, half, rows)
    for k in keys:
        for h in (0, 1):
            rows_h = members[k][halves[members[k]] == h]
            bins = _accumulator(box, options).psi_bins(
                table.particles["angle"].to_numpy()[rows_h])
            blocks += [(k, h, rows_h[part]) for part in psi_blocks(bins, block_particles)]
    tasks = ((task_table(table, rows), used_stacks(table, rows, stacks), box, options,
              _rotation(angles[k], options.axis)) for k, _, rows in blocks)
    results = runner.map(spectrum_block, tasks, [len(rows) for *_, rows in blocks], progress)
    half_sums: list[RotatedSums | None] = [None, None]
    for i, ((k, h, _), block) in enumerate(zip(blocks, results)):
        half_sums[h] = block if half_sums[h] is None else half_sums[h] + block  # type: ignore[operator]
        if i + 1 == len(blocks) or blocks[i + 1][0] != k:
            h1, h2 = half_sums
            sums = h2 if h1 is None else (h1 if h2 is None else h1 + h2)
            assert sums is not None
            yield k, angles[k], sums, helical.ClassExtras(  # averages of up to AXIS_PARTICLES
                h1 if options.half_sets else None, h2, *rebuilt.get(k, (None, 0)))  # type: ignore[arg-type]
            half_sums = [None, None]


def psi_blocks(bins: np.ndarray, size: int) -> list[np.ndarray]:
    """Split particles into blocks of whole psi bins of about ``size`` particles each.

    Parameters
    ----------
    bins
        ``(n,)`` psi bin of each particle.
    size
        Target particles per block (a bin is never split, so a block may hold more).

    Returns
    -------
    list of ndarray
        Positions into ``bins``, ascending within each block; together every position once.
    """
    order = np.argsort(bins, kind="stable")
    counts = np.bincount(bins)
    cuts, total = [], 0
    for b, count in enumerate(counts):  # close a block at the bin where it reaches size
        total += count
        if total >= size and b + 1 < len(counts):
            cuts.append(b + 1)
            total = 0
    edges = np.searchsorted(bins[order], cuts)
    return [np.sort(part) for part in np.split(order, edges) if len(part)]


def spectrum_block(table: ParticleTable, stacks: dict[str, Stack], box: int,
                   options: SpectrumOptions, rotation: float,
                   progress: Callable[[int], None] | None = None) -> RotatedSums:
    """Every particle of ``table`` in one accumulator, its bins rotated (plus ``rotation``)
    and summed: one power-spectrum task."""
    acc = _accumulator(box, options)
    angles = table.particles["angle"].to_numpy()
    for rows, images in iter_chunks(table, stacks=stacks):
        acc.add(images, angles[rows])
        if progress is not None:
            progress(len(rows))
    return acc.rotated_sums(rotation)


def rebuilt_average(table: ParticleTable, stacks: dict[str, Stack],
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Sum and count of the aligned particles of ``table`` (bilinear), for the axis estimate."""
    sums: dict[int, tuple[np.ndarray, int]] = {}
    for rows, images in iter_chunks(table, stacks=stacks):
        _rebuild(sums, 0, images, table, rows)
    return sums[0]


def _rotation(angle: float | None, axis: Axis) -> float:
    """Extra rotation of a class's spectrum: none without an axis angle."""
    return axis_rotation(angle, axis) if angle is not None else 0.0


def _accumulator(box: int, o: SpectrumOptions) -> PowerSpectrumAccumulator:
    own = o.filament_width is None  # else the filament masker conditions the images
    return PowerSpectrumAccumulator(box, pad=o.pad, mask=o.mask and own,
                                    normalize=o.normalize and own,
                                    suppress_detector_lines=o.suppress_detector_lines,
                                    psi_bin_deg=o.psi_bin_deg, quantity=o.quantity)


def _stored_averages(path: str | Path | None, table: ParticleTable, labels: np.ndarray,
                     box: int) -> dict[int, np.ndarray]:
    """Stored class averages by class number; slice = 0-based class index."""
    if path is None:
        return {}
    stack = open_stack(path)
    if stack.box != (box, box):
        raise InputError(path, f"holds {stack.box} images but the particles are {box} px",
                         "pass the class averages of the same job")
    index = labels - table.class_base
    if len(index) and index.max() >= stack.n:
        raise InputError(path, f"has {stack.n} class averages; class {labels.max()} needs more",
                         "pass the class averages of the same job")
    return {int(k): image for k, image in zip(labels, stack.read(index))}


def _rebuild(sums: dict[int, tuple[np.ndarray, int]], k: int, images: np.ndarray,
             table: ParticleTable, rows: np.ndarray,
             limit: int | None = AXIS_PARTICLES) -> None:
    """Add up to ``limit`` (None: all) aligned particles of class k to its running sum."""
    have = sums.get(k)
    count = 0 if have is None else int(have[1])
    take = len(rows) if limit is None else min(len(rows), limit - count)
    if take <= 0:
        return
    p = table.particles.iloc[rows[:take]]
    aligned = align_images(images[:take], p["angle"].to_numpy(),
                           p[["shift_x", "shift_y"]].to_numpy(), "linear").sum(axis=0)
    sums[k] = (aligned if have is None else have[0] + aligned, count + take)


def _axis_angle(k: int, given: dict[int, float] | None, stored: dict[int, np.ndarray],
                rebuilt: dict[int, tuple[np.ndarray, int]], axis: Axis) -> float | None:
    """Helical axis of class k in radians (None when the class frame is kept)."""
    if given and k in given:
        return float(np.deg2rad(given[k]))
    if axis == "class":
        return None
    image = stored[k] if k in stored else rebuilt[k][0] / rebuilt[k][1]
    return filament_axis_angle(image)


def _write_outputs(outdir: Path, spectra: dict[str, np.ndarray], pixel_size: float,
                   o: SpectrumOptions, skip_png: set[str] = frozenset()) -> float:  # type: ignore[assignment]
    """Write every spectrum (.mrc, .png, profiles); return the header pixel size."""
    header_pixel = pixel_size
    profile_axis = "horizontal" if o.axis == "horizontal" else "vertical"
    for name, spectrum in spectra.items():
        if o.crop_resolution is not None:
            spectrum, header_pixel = crop_to_resolution(spectrum, pixel_size, o.crop_resolution)
        data = to_log(spectrum) if o.log else spectrum
        write_image(outdir / f"{name}.mrc", data, header_pixel)
        prof = profiles(spectrum, header_pixel, profile_axis)
        figures.profiles_csv(outdir / f"{name}_profiles.csv", prof)
        if name not in skip_png:
            figures.spectrum_png(outdir / f"{name}.png", spectrum, header_pixel, prof, title=name)
    return header_pixel
