"""``csplugin class-averages --select ...``: stored classes, a selector, the stored averager.

:func:`selection_source` builds the :class:`~csplugin.averaging.ClassAvgSource` the command
line uses; its :meth:`~csplugin.averaging.ClassAvgSource.save` writes the outputs of
``csplugin class-averages`` (same files, same averaging options) with slices in selection
order, best first, and the selector's scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from csplugin.averaging.averagers import StoredAlignmentAverager2D
from csplugin.averaging.classifiers import StoredClass2D
from csplugin.averaging.engine import check_options, make_stacker, particle_weights
from csplugin.averaging.selectors import SELECTIONS, GlobalClassSelector, make_selector
from csplugin.averaging.sources import ClassAvgSource
from csplugin.core import conventions as cv
from csplugin.core.particles import ParticleTable
from formats import InputError

__all__ = ["selection_source", "particles_to_average"]

#: Selections that rank by member distances (StoredClass2D computes them: two passes).
NEEDS_DISTANCES = ("neighbor-variance", "distance")


def selection_source(table: ParticleTable, select: str, *, repulsion: int | None = None,
                     stacker: str = "mean", sigma: float = 3.0, percentile: float = 0.1,
                     weights: str = "none", ctf: str = "none", wiener_snr: float | None = None,
                     interpolation: str = "cubic", spill_dir: str | Path | None = None,
                     seed: int = 0) -> ClassAvgSource:
    """The source of ``csplugin class-averages --select SELECT [--repulsion K]``.

    Parameters
    ----------
    table
        Particles; only classified ones (``class_index >= 0``) are used.
    select
        One of :data:`~csplugin.averaging.SELECTIONS`.
    repulsion
        ``exclude_k`` of :class:`~csplugin.averaging.GreedyClassRepulsionMixin` (stored
        classes are disjoint, so it removes nothing from them).
    stacker, sigma, percentile, weights, ctf, wiener_snr, interpolation
        As :func:`csplugin.jobs.class_averages.class_averages`.
    spill_dir
        Temporary files of order-statistic stackers.
    seed
        Seed of ``random``.

    Raises
    ------
    InputError
        Bad option, no classified particles, missing posteriors or CTF, zero-weight class.
    """
    check_options(stacker, sigma, percentile, weights, ctf, wiener_snr, interpolation)
    if select not in SELECTIONS:
        raise InputError(None, f"unknown --select {select!r}",
                         f"choose one of {', '.join(SELECTIONS)}")
    if repulsion is not None and repulsion < 1:
        raise InputError(None, f"--repulsion {repulsion} must be >= 1", "e.g. --repulsion 5")
    classified = table.particles["class_index"].to_numpy() >= 0
    if not classified.any():
        raise InputError(table.source, "has no 2D class assignments (alignments2D/class or "
                         "rlnClassNumber)", "pass the particles of a 2D classification job")
    table = table.take(classified)
    w = particle_weights(table, weights)
    index = table.particles["class_index"].to_numpy()
    for k in np.unique(index):
        if w[index == k].sum() <= 0:
            raise InputError(table.source, f"class {cv.to_base(k, table.class_base)}: the "
                             "particle weights sum to zero", "use --weights none")
    averager = StoredAlignmentAverager2D(table, make_stacker(stacker, sigma, percentile),
                                         weights=w, ctf=ctf, wiener_snr=wiener_snr,
                                         interpolation=interpolation, spill_dir=spill_dir)
    classifier = StoredClass2D(table, distances=select in NEEDS_DISTANCES,
                               interpolation=interpolation)
    return ClassAvgSource(table, classifier, make_selector(select, averager, repulsion, seed),
                          averager)


def particles_to_average(source: ClassAvgSource, keep: int | None) -> int:
    """Particles stacked to save the first ``keep`` averages: every class's for a global
    selector (it averages all classes to rank them), else the kept classes'. Selects."""
    counts = source.class_table.counts
    if isinstance(source.class_selector, GlobalClassSelector):
        return int(counts.sum())
    return int(counts[source.selection_indices[:keep]].sum())
