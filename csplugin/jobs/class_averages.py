"""Class averages rebuilt from the stored 2D alignments: ``csplugin class-averages``.

:func:`class_averages` takes a :class:`~csplugin.core.particles.ParticleTable` (select classes
beforehand with :meth:`~csplugin.core.particles.ParticleTable.select_classes`) and, for each
class in ascending class number, aligns its particles with
:func:`csplugin.engines.transform.align_images` (the aligned image is ``A(q) = P(R(-θ) q - s)``,
see :mod:`csplugin.core.conventions`) and stacks them.

The averaging itself is :func:`csplugin.averaging.engine.average_class` (stackers, weights and
CTF modes are described there); the files written are those of
:mod:`csplugin.outputs.averages`. Every output is written atomically; existing outputs are
refused without ``overwrite`` and a failed run leaves none of its files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from csplugin.averaging.engine import (
    AveragingPlan,
    average_class,
    check_ctf,
    check_options,
    make_stacker,
    particle_weights,
)
from csplugin.averaging.sources import ClassAvgSource, SavedAverages
from csplugin.core import conventions as cv
from csplugin.core.images import check_stacks, open_class_averages
from csplugin.core.particles import ParticleTable
from csplugin.engines.correlation import disc_correlation
from csplugin.jobs.runners import SerialRunner, TaskRunner, task_table, used_stacks
from csplugin.outputs.averages import output_paths, write_averages
from csplugin.outputs.directory import claim, transaction
from csplugin.outputs.figure_process import FigureProcess
from formats import InputError


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


@transaction()  # the result replaces OUTDIR's previous one on return, or nothing changes
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
        present is averaged; select with
        :meth:`~csplugin.core.particles.ParticleTable.select_classes` first.
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
    given = open_class_averages(compare, class_index, box) if compare is not None else None
    for k in class_index:
        if w[index == k].sum() <= 0:
            raise InputError(table.source, f"class {cv.to_base(k, table.class_base)}: the "
                             "particle weights sum to zero", "use --weights none")
    final = output_paths(outdir)
    products = [p.name for p in final.values()] + (["compare.csv"] if given is not None else [])
    out = claim(outdir, products, job="class-averages", overwrite=overwrite)
    names = output_paths(out.staging)  # written there; relion_path names the final place

    with FigureProcess() as draw:  # forked before the threads; imports matplotlib meanwhile
        plan = AveragingPlan.create(table, make_stacker(stacker, sigma, percentile), ctf=ctf,
                                    snr=wiener_snr, interpolation=interpolation,
                                    chunk_size=chunk_size, tile_bytes=tile_bytes,
                                    spill_dir=outdir)
        averages = np.empty((len(class_index), box, box), np.float32)
        snrs = np.empty(len(class_index))
        members = [np.flatnonzero(index == k) for k in class_index]
        tasks = ((task_table(table, rows), used_stacks(table, rows, stacks), w[rows], plan)
                 for rows in members)
        results = (runner or SerialRunner()).map(average_class, tasks, map(len, members),
                                                 progress)
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
                "correlation": [disc_correlation(a, b) for a, b in
                                zip(averages, given.read(class_index))]})
        write_averages(names, averages, class_index, counts, table.class_base, pixel_size,
                       comparison=comparison, draw=draw)
    return ClassAveragesResult(
        final["mrcs"], final["cs"], final["star"], final["png"], numbers, counts, averages,
        snrs if ctf == "wiener" else None, comparison,
        outdir / "compare.csv" if comparison is not None else None)


@transaction()  # source.save below writes into this claim's staging directory
def selected_class_averages(source: ClassAvgSource, outdir: str | Path, *,
                            keep: int | None = None, compare: str | Path | None = None,
                            invert_contrast: bool = False, overwrite: bool = False,
                            progress: Callable[[int], None] | None = None) -> SavedAverages:
    """``csplugin class-averages --select``: write the first ``keep`` (default all) classes
    of ``source`` (:func:`csplugin.averaging.selection.selection_source`) best first, with
    the selector's scores (:meth:`~csplugin.averaging.ClassAvgSource.save`).

    Raises
    ------
    InputError
        ``compare`` given (it needs the class order), ``keep < 1``, existing outputs
        without ``overwrite``. Nothing is written then.
    """
    if compare is not None:
        raise InputError(None, "--compare needs the class order", "drop --select")
    if keep is not None and keep < 1:
        raise InputError(None, f"--keep {keep} must be >= 1", "e.g. --keep 20")
    outdir = Path(outdir)
    claim(outdir, [p.name for p in output_paths(outdir).values()], job="class-averages",
          overwrite=overwrite)
    source.averager.progress = progress
    return source.save(outdir, keep, invert_contrast=invert_contrast, overwrite=True)

