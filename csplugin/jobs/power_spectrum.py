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
``runner``, the first ``helical_indexing.AXIS_PARTICLES``), which is also written, turned
and centred like the spectrum, to ``class_averages.mrcs``; in each case by
:func:`csplugin.engines.filament.filament_axis_angle` (the normal of the strongest central line
of the average's power spectrum, its equator: robust for oblique, thin or wide filaments and
noisy averages).
The pooled spectrum adds the classes *after* each is turned, so with ``vertical`` or
``horizontal`` it pools all segments with their helical axes made parallel.

Memory (bounded whatever the particle count): each class and half set has its own
accumulator of ``180/psi_bin_deg`` bins of ``M (M//2+1)`` float32, of which only the
populated bins are backed (at most 190 MB at box 256, pad 2, 0.5°; ``2880 N (N+1)`` bytes for
box ``N`` at pad 2). Accumulators are cut into blocks of whole psi bins and packed into passes
so that the bins held at once stay within ``memory_budget`` (64 MB; at least one bin, i.e.
``max(memory_budget, 4 M (M//2+1))`` bytes, whatever the box), each pass reading only its
particles (plus, in a class's first pass, the particles of its average), so every particle is
still transformed once; freed memory is handed back to the OS between passes. The pooled
spectrum is the sum of the classes' rotated ``(M, M)`` sums, so it needs no bins of its own.
Besides the bins: the interpreter and libraries (~320 MB), per worker thread a piece of
images (:data:`csplugin.engines.parallel_spectra.PIECE_BYTES`, 2 MiB) and its FFT plan's
buffers (2.5 MB at M = 512), at most 48 MB of rotation partial sums, and a few kB per class:
each class's outputs are written when it is complete (its spectra, half-set spectra and
average in :class:`csplugin.jobs.helical_indexing.HelicalStacks`), so memory does not grow
with the number of classes either. Measured at box 256, pad 2, 12,000 particles: 457-493 MB
at 2 threads (3 classes), 536-557 MB with 60 classes, 578 MB at ``CSPLUGIN_THREADS=16``.

Work: worker threads, one per core, each take whole groups of psi bins (read, condition,
FFT, add; :func:`csplugin.engines.parallel_spectra.accumulate_in_parallel`); each class's
indexing and figure go to the figure process
(:class:`csplugin.outputs.figure_process.FigureProcess`) as soon as the class is complete.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from csplugin.core.images import check_stacks, open_class_averages, reader
from csplugin.core.memory import limit_arenas, release_free_memory
from csplugin.core.particles import ParticleTable
from csplugin.core.threads import threads
from csplugin.engines.filament import filament_axis_angle
from csplugin.engines.parallel_spectra import accumulate_in_parallel
from csplugin.engines.power_spectrum import (
    PowerSpectrumAccumulator,
    RotatedSums,
    axis_rotation,
    crop_to_resolution,
    profiles,
    to_log,
)
from csplugin.jobs import helical_indexing as helical
from csplugin.jobs.runners import TaskRunner, task_table, used_stacks
from csplugin.outputs import figures
from csplugin.outputs.directory import claim, transaction
from csplugin.outputs.figure_process import FigureProcess
from formats import InputError
from formats.atomic import atomic_output
from formats.mrc import Stack, write_image

Axis = Literal["class", "vertical", "horizontal"]


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
                  memory_budget: int = 64 << 20,
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
        Bytes of psi-bin sums held at once (accumulators, half sets included, are split into
        blocks of whole bins and grouped into passes to fit; at least one bin a pass).
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
    if threads() > 4:  # before the threads start: an arena each cost ~10 MB (core.memory)
        limit_arenas()
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
    with FigureProcess() as draw:  # forked now, before the job's threads; draws the PNGs
        stored = _stored_averages(class_averages, table, labels, box)
        keys: list[int | None] = [int(k) for k in labels] or [None]  # None: unclassified input
        if runner is None:
            class_sums = _grouped_passes(table, stacks, keys, stored, axis_angles, options,
                                         memory_budget, progress)
        else:
            class_sums = _block_tasks(table, stacks, keys, stored, axis_angles, options,
                                      block_particles, runner, progress)
        pooled: RotatedSums | None = None
        axis_deg: dict[int, float] = {}
        helix: list[helical.ClassOutput] = []
        class_figures: dict[int, dict[str, str]] = {}
        header_pixel = pixel_size
        with helical.HelicalStacks(outdir, len(labels), box, pixel_size, options) as stacks_out:
            pending: deque[tuple[helical.ClassOutput, Future[tuple[helical.ClassIndex,
                                                                 dict[str, str]]]]] = deque()

            def finish(wait: bool) -> None:  # the classes indexed and drawn so far, in order
                while pending and (wait or pending[0][1].done()):
                    c, future = pending.popleft()
                    c.result, class_figures[c.k] = future.result()
                    helix.append(c.slim())

            for k, angle, sums, extras in class_sums:  # in class order, each when complete
                if angle is not None:
                    axis_deg[k] = float(np.rad2deg(angle))
                if k is not None:  # its outputs now, so memory does not grow with classes
                    spectrum = sums.spectrum()
                    header_pixel = _write_outputs(outdir, {f"ps_class{k}": spectrum},
                                                  pixel_size, options, draw=None, png=False)
                    c = helical.class_output(k, angle, spectrum, extras, pixel_size, options)
                    stacks_out.add(c)
                    # indexed and drawn by the figure process while the next classes run
                    pending.append((c, draw.submit(helical.index_and_draw, outdir, c,
                                                   pixel_size, options)))
                    finish(wait=False)
                pooled = sums if pooled is None else pooled + sums
            finish(wait=True)
        assert pooled is not None
        spectra = {"ps_all": pooled.spectrum(), "ps_camera_frame": pooled.camera_frame()}
        del pooled
        header_pixel = _write_outputs(outdir, spectra, pixel_size, options, draw=draw)
        counts = {int(k): int(np.sum(numbers == k)) for k in labels}
        result = SpectrumResult(final_outdir, counts, axis_deg, pixel_size, header_pixel)
        summary = {"input": str(table.source), "particles": len(table),
                   "class_numbering": "0-based" if table.class_base == 0 else "1-based",
                   "classes": counts, "axis_angles_deg": axis_deg, "pixel_size_A": pixel_size,
                   "header_pixel_size_A": header_pixel, "box": box,
                   "spectrum_size": int(spectra["ps_all"].shape[0]), "options": asdict(options)}
        if helix:
            summary.update(helical.helical_outputs(outdir, helix, pixel_size, options,
                                                   helical.filament_halves(table)[1], summary,
                                                   class_figures))
        with atomic_output(outdir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
        return result


def _json_default(value: object) -> object:
    """NumPy scalars (and anything else) in summary.json."""
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


ClassSums = Iterator[tuple[int | None, float | None, RotatedSums, "helical.ClassExtras"]]


def _units(table: ParticleTable, keys: list[int | None], options: SpectrumOptions,
           budget: int) -> list[tuple[int | None, int, np.ndarray, int]]:
    """The accumulators of the local run, in class order: ``(class, half, rows, bytes)``.

    One per class and half set (one per class without half sets), cut into blocks of whole
    psi bins where its populated bins take more than ``budget`` bytes (each block at most
    ``max(1, budget // bin bytes)`` bins; a block's bins are disjoint from the others', so the
    blocks' rotated sums add up to the whole's). ``bytes``: its populated bins, the memory it
    touches (unpopulated bins of ``np.zeros`` are never backed).
    """
    numbers, angles = table.class_numbers(), table.particles["angle"].to_numpy()
    halves = (helical.filament_halves(table)[0] if options.half_sets
              else np.zeros(len(table), np.int64))
    probe = _accumulator(table.box(), options)  # lazily zeroed: costs no memory
    bin_bytes = probe.size * (probe.size // 2 + 1) * 4
    cap = max(1, budget // bin_bytes)
    units = []
    for k in keys:
        rows_k = np.flatnonzero(numbers == k) if k is not None else np.arange(len(table))
        for h in (0, 1):
            rows = rows_k[halves[rows_k] == h]
            if not len(rows):
                continue
            bins = probe.psi_bins(angles[rows])
            used = np.unique(bins)
            for part in np.array_split(used, -(-len(used) // cap)):
                units.append((k, h, rows[np.isin(bins, part)], len(part) * bin_bytes))
    return units


def _grouped_passes(table: ParticleTable, stacks: dict[str, Stack], keys: list[int | None],
                    stored: dict[int, np.ndarray], given: dict[int, float] | None,
                    options: SpectrumOptions, budget: int,
                    progress: Callable[[int], None] | None) -> ClassSums:
    """Yield ``(class, axis angle or None, rotated sums, extras)`` per class, in order (the
    local run): the accumulators of :func:`_units` are packed in order into passes whose bins
    fit ``budget`` bytes (at least one accumulator a pass); each pass reads only its
    accumulators' particles, plus, in the first pass of a class, the particles of its
    average (``class_averages.mrcs`` and the axis, complete before any of its bins are
    rotated). Each pass's bins are rotated and freed before the next pass allocates its own.
    """
    numbers, box = table.class_numbers(), table.box()
    angles = table.particles["angle"].to_numpy()
    chosen = helical.average_rows(numbers)  # the particles of class_averages.mrcs
    passes: list[list[tuple[int | None, int, np.ndarray, int]]] = []
    used = budget + 1
    for unit in _units(table, keys, options, budget):
        if used + unit[3] > budget:
            passes.append([])
            used = 0
        passes[-1].append(unit)
        used += unit[3]
    last = {unit[0]: i for i, units in enumerate(passes) for unit in units}
    rebuilt: dict[int, tuple[np.ndarray, int]] = {}
    axes: dict[int | None, float | None] = {}
    half_sums: dict[int | None, list[RotatedSums | None]] = {}
    read, lock, poses = reader(table, stacks), threading.Lock(), table.alignments()
    for i, units in enumerate(passes):
        group = list(dict.fromkeys(unit[0] for unit in units))
        fresh = [k for k in group if k is not None and k not in axes]  # first pass of k
        owner = np.full(len(table), -1, np.int64)
        for j, unit in enumerate(units):
            owner[unit[2]] = j
        average = chosen & np.isin(numbers, fresh)  # read in this pass for class_averages
        scope = np.flatnonzero(np.isin(numbers, group)) if group != [None] else None
        masker = None if options.filament_width is None else helical.filament_masker(
            table.take(scope) if scope is not None else table, stacks, group, given, stored,
            options)
        accs = [_accumulator(box, options) for _ in units]

        def add_average(rows: np.ndarray, images: np.ndarray, average=average) -> None:
            mine = average[rows]
            for k in np.unique(numbers[rows[mine]]):
                sel = mine & (numbers[rows] == k)
                helical.add_aligned(rebuilt, int(k), images[sel], poses, rows[sel], lock)

        def prepare(rows: np.ndarray, images: np.ndarray, masker=masker, scope=scope
                    ) -> np.ndarray:
            return masker(images, np.searchsorted(scope, rows) if scope is not None else rows)

        accumulate_in_parallel(accs, owner, angles, read, also=average,
                               on_images=add_average if fresh else None,
                               prepare=prepare if masker else None, progress=progress)
        for j, (k, h, *_) in enumerate(units):
            if k not in axes:  # its average is complete: this is the class's first pass
                axes[k] = (None if k is None
                           else _axis_angle(k, given, stored, rebuilt, options.axis))
            if accs[j].n:
                sums = accs[j].rotated_sums(_rotation(axes[k], options.axis))
                pair = half_sums.setdefault(k, [None, None])
                pair[h] = sums if pair[h] is None else pair[h] + sums  # type: ignore[operator]
            accs[j] = None  # type: ignore[call-overload]  # free its bins
        del accs
        release_free_memory()  # the pass's freed chunks and temporaries, before the next one
        for k in group:
            if last[k] != i:
                continue
            h1, h2 = half_sums.pop(k)
            total = h2 if h1 is None else (h1 if h2 is None else h1 + h2)
            assert total is not None
            yield k, axes[k], total, helical.ClassExtras(  # the halves as spectra: 1 MB, not 7
                _averaged(h1) if options.half_sets else None, _averaged(h2),
                *rebuilt.pop(k, (None, 0)))  # type: ignore[arg-type]


@dataclass
class _AveragedSums(RotatedSums):
    """A set's :meth:`RotatedSums.spectrum` alone (float32, in ``plain``) with its ``n``: what
    the helical outputs read of the half sets, kept for every class until the end, in a
    seventh of the memory of the sums (1 instead of 7.3 MB at M = 512)."""

    def spectrum(self) -> np.ndarray:
        return self.plain  # type: ignore[return-value]

    def __add__(self, other: RotatedSums) -> RotatedSums:
        raise TypeError("averaged sums cannot be pooled")

    def camera_frame(self) -> np.ndarray:
        raise TypeError("averaged sums keep no camera frame")


def _averaged(sums: RotatedSums | None) -> RotatedSums | None:
    """``sums`` reduced to its spectrum and count (:class:`_AveragedSums`)."""
    if sums is None:
        return None
    return _AveragedSums(sums.spectrum(), None, None, np.zeros((0, 0)), sums.n)  # type: ignore[arg-type]


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
    firsts = [members[k][:helical.AXIS_PARTICLES] for k in missing]
    rebuilt = dict(zip(missing, runner.map(
        helical.aligned_sum,
        ((task_table(table, r), used_stacks(table, r, stacks)) for r in firsts),
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
    accumulate_in_parallel([acc], np.zeros(len(table), np.int64),
                           table.particles["angle"].to_numpy(), reader(table, stacks),
                           progress=progress)
    return acc.rotated_sums(rotation)


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
    index = labels - table.class_base
    stack = open_class_averages(path, index, box)
    return {int(k): image for k, image in zip(labels, stack.read(index))}


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
                   o: SpectrumOptions, draw: FigureProcess | None = None, png: bool = True
                   ) -> float:
    """Write every spectrum (.mrc, profiles and with ``png`` a .png by ``draw``); return the
    header pixel size."""
    header_pixel = pixel_size
    profile_axis = "horizontal" if o.axis == "horizontal" else "vertical"
    for name, spectrum in spectra.items():
        if o.crop_resolution is not None:
            spectrum, header_pixel = crop_to_resolution(spectrum, pixel_size, o.crop_resolution)
        data = to_log(spectrum) if o.log else spectrum
        write_image(outdir / f"{name}.mrc", data, header_pixel)
        prof = profiles(spectrum, header_pixel, profile_axis)
        figures.profiles_csv(outdir / f"{name}_profiles.csv", prof)
        if png:
            (draw or FigureProcess(0))(figures.spectrum_png, outdir / f"{name}.png", spectrum,
                                       header_pixel, prof, title=name)
    return header_pixel
