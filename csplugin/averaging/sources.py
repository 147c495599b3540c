"""Class-average sources: classifier -> selector -> averager, evaluated lazily.

``ClassAvgSource(src, classifier, class_selector, averager)`` classifies on the first
access to a class property, selects on the first access to the selection (``n``,
``selection_indices``, ``quality_scores``, ``images``, :meth:`~ClassAvgSource.save`) and
averages only the classes asked for: ``images[i:j]`` averages selected classes ``i .. j-1``
(``n`` is the selection's length, which a selector may shrink). Averages are not kept,
except those a :class:`~csplugin.averaging.GlobalClassSelector` scored with the same
averager (served from its heap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from csplugin.averaging.averagers import Averager2D, StoredAlignmentAverager2D
from csplugin.averaging.classes import ClassTable, Ragged
from csplugin.averaging.classifiers import Class2D, StoredClass2D
from csplugin.averaging.rir.classifier import RIRClass2D
from csplugin.averaging.search_averagers import BFSRAverager2D
from csplugin.averaging.selectors import (
    ClassSelector,
    DistanceClassSelector,
    DistanceWithRepulsionClassSelector,
    GlobalClassSelector,
    TopClassSelector,
)
from csplugin.core.particles import ParticleTable
from csplugin.outputs.averages import output_paths, write_averages
from csplugin.outputs.directory import claim, transaction

__all__ = ["ClassAvgSource", "DebugClassAvgSource", "DefaultClassAvgSource", "SavedAverages"]

#: Label of the selector's score in class_averages.star (RELION has none; kept as unknown).
SCORE_LABEL = "rlnClassSelectionScore"


@dataclass(frozen=True)
class SavedAverages:
    """What :meth:`ClassAvgSource.save` wrote.

    Attributes
    ----------
    mrcs, cs, star, png
        The files (slice ``i`` = the ``i``-th selected class).
    rows
        ``(k,)`` class-table rows written, in order.
    labels
        ``(k,)`` their class labels (0-based stored class index, or reference particle).
    counts
        ``(k,)`` members per class.
    scores
        ``(k,)`` the selector's quality scores.
    averages
        ``(k, L, L)`` float32, as written.
    """

    mrcs: Path
    cs: Path
    star: Path
    png: Path
    rows: np.ndarray
    labels: np.ndarray
    counts: np.ndarray
    scores: np.ndarray
    averages: np.ndarray


class _Images:
    """``source.images[key]``: int -> ``(L, L)``, slice or index array -> ``(k, L, L)``."""

    def __init__(self, source: ClassAvgSource) -> None:
        self._source = source

    def __len__(self) -> int:
        return self._source.n

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        n = self._source.n
        if isinstance(key, (int, np.integer)):
            if not -n <= key < n:
                raise IndexError(f"class average {key} out of range for {n} selected classes")
            return self._source.average_positions(np.array([key % n]))[0]
        return self._source.average_positions(np.arange(n)[key])


class ClassAvgSource:
    """Class averages of ``src`` (module docstring).

    Parameters
    ----------
    src
        The particles (:func:`csplugin.open_particles`).
    classifier, class_selector, averager
        The parts; None means the source's default (for this class:
        :class:`StoredClass2D`, :class:`TopClassSelector`,
        :class:`StoredAlignmentAverager2D`; subclasses choose their own).
    """

    def __init__(self, src: ParticleTable, classifier: Class2D | None = None,
                 class_selector: ClassSelector | None = None,
                 averager: Averager2D | None = None) -> None:
        if not isinstance(src, ParticleTable):
            raise TypeError(f"src must be a ParticleTable (csplugin.open_particles), "
                            f"got {type(src).__name__}")
        self.src = src
        classifier = classifier if classifier is not None else self._default_classifier(src)
        averager = averager if averager is not None else self._default_averager(src)
        class_selector = class_selector if class_selector is not None \
            else self._default_selector(averager)
        for part, kind in ((classifier, Class2D), (class_selector, ClassSelector),
                           (averager, Averager2D)):
            if not isinstance(part, kind):
                raise TypeError(f"expected a {kind.__name__}, got {type(part).__name__}")
        ranking = getattr(class_selector, "averager", None)
        if any(part is not None and part.src is not src
               for part in (classifier, averager, ranking)):
            raise ValueError("the classifier and the averagers must use this source's src")
        self.classifier, self.class_selector, self.averager = classifier, class_selector, averager
        self._table: ClassTable | None = None
        self._selection: np.ndarray | None = None

    # defaults, overridden by the presets
    def _default_classifier(self, src: ParticleTable) -> Class2D:
        return StoredClass2D(src, distances=False)

    def _default_selector(self, averager: Averager2D) -> ClassSelector:
        return TopClassSelector()

    def _default_averager(self, src: ParticleTable) -> Averager2D:
        return StoredAlignmentAverager2D(src)

    # ------------------------------------------------------------------------ classification
    @property
    def class_table(self) -> ClassTable:
        """The classification (classifies on first access), rows in classifier order."""
        if self._table is None:
            self._table = self.classifier.classify()
            if not isinstance(self._table, ClassTable):
                raise TypeError(f"{type(self.classifier).__name__}.classify() must return a "
                                "ClassTable")
        return self._table

    @property
    def class_indices(self) -> Ragged:
        """Members of every class, ``[class][member]`` (all classes, classifier order)."""
        return self.class_table.indices

    @property
    def class_refl(self) -> Ragged:
        """Mirror flag of every member, ``[class][member]``."""
        return self.class_table.refl

    @property
    def class_distances(self) -> Ragged:
        """Distance of every member, ``[class][member]``."""
        return self.class_table.distances

    # ---------------------------------------------------------------------------- selection
    @property
    def selection_indices(self) -> np.ndarray:
        """``(n,)`` class-table rows of the outputs: ``images[k]`` averages row
        ``selection_indices[k]`` (selects on first access)."""
        if self._selection is None:
            self._selection = self.class_selector.select(self.class_table)
        return self._selection

    @property
    def quality_scores(self) -> np.ndarray:
        """``(n,)`` the selector's scores, in output order."""
        _ = self.selection_indices  # selecting sets the selector's scores
        return self.class_selector.quality_scores

    @property
    def n(self) -> int:
        """Number of selected classes (available averages)."""
        return int(self.selection_indices.size)

    @property
    def L(self) -> int:  # noqa: N802 (ASPIRE's name)
        """Image size in pixels."""
        return self.averager.box

    # ---------------------------------------------------------------------------- averaging
    @property
    def images(self) -> _Images:
        """``images[i:j]`` -> ``(k, L, L)`` float32 averages of selected classes ``i .. j-1``."""
        return _Images(self)

    def average_positions(self, positions: np.ndarray) -> np.ndarray:
        """Averages ``(k, L, L)`` float32 of selection positions ``(k,)`` (0 .. n-1)."""
        rows = self.selection_indices[positions]
        table = self.class_table
        out = np.empty((rows.size, self.L, self.L), np.float32)
        cache = self.class_selector.cached \
            if isinstance(self.class_selector, GlobalClassSelector) \
            and self.class_selector.averager is self.averager else (lambda row: None)
        missing = []
        for i, row in enumerate(rows.tolist()):
            image = cache(row)
            if image is None:
                missing.append(i)
            else:
                out[i] = image
        if missing:
            todo = rows[missing]
            out[missing] = self.averager.average(table.indices[todo], table.refl[todo],
                                                 table.labels[todo])
        return out

    @transaction()  # the result replaces OUTDIR's previous one on return, or nothing changes
    def save(self, outdir: str | Path, n: int | None = None, *, invert_contrast: bool = False,
             overwrite: bool = False, montage_limit: int = 64) -> SavedAverages:
        """Write the first ``n`` (default all) selected averages to ``outdir``.

        Files as :func:`csplugin.jobs.class_averages.class_averages` writes them
        (``class_averages.mrcs``, ``.cs``, ``.star``, ``.png``), in selection order, with
        the selector's score added (``.star``: ``rlnClassSelectionScore``; ``.cs``:
        ``selection/score`` and ``selection/rank``, 0 = best). The montage shows the first
        ``montage_limit``. Memory: the ``n`` averages.
        """
        outdir = Path(outdir)
        final = output_paths(outdir)
        out = claim(outdir, [p.name for p in final.values()], job="class-averages",
                    overwrite=overwrite)
        names = output_paths(out.staging)  # written there; relion_path names the final place
        count = self.n if n is None else max(0, min(int(n), self.n))
        if count == 0:
            raise ValueError("nothing to save: the selection is empty")
        positions = np.arange(count)
        averages = self.average_positions(positions)
        if invert_contrast:
            averages *= -1
        rows = self.selection_indices[positions]
        labels = self.class_table.labels[rows]
        counts = self.class_table.counts[rows]
        scores = self.quality_scores[positions]
        write_averages(names, averages, labels, counts, self.src.class_base,
                       self.averager.plan.pixel_size,
                       star_columns={SCORE_LABEL: scores},
                       cs_fields={"selection/score": scores.astype(np.float32),
                                  "selection/rank": positions.astype(np.uint32)},
                       montage_limit=montage_limit)
        return SavedAverages(final["mrcs"], final["cs"], final["star"], final["png"], rows,
                             labels, counts, scores, averages)


class DebugClassAvgSource(ClassAvgSource):
    """The simplest parts, output in class order: :class:`StoredClass2D` (no distances),
    :class:`TopClassSelector`, :class:`StoredAlignmentAverager2D` (mean).

    ``images[k]`` is the stored-alignment average of the ``k``-th class present
    (ascending class index), exactly what ``csplugin class-averages`` writes.
    """


@dataclass(frozen=True)
class _Configuration:
    classifier: Callable[[ParticleTable], Class2D]
    selector: Callable[[Averager2D], ClassSelector]
    averager: Callable[[ParticleTable], Averager2D]


def _has_classes(src: ParticleTable) -> bool:
    """Whether every particle carries a stored 2D class."""
    return bool((src.particles["class_index"] >= 0).all())


class DefaultClassAvgSource(ClassAvgSource):
    """The recommended parts, versioned so that old results can be reproduced.

    +----------+----------------------+-------------------------+----------------------------+
    | version  | classifier           | selector                | averager                   |
    +==========+======================+=========================+============================+
    | 0.1.0    | StoredClass2D with   | DistanceClassSelector:  | StoredAlignmentAverager2D: |
    |          | leave-one-out member | tightest classes first, | stored θ and s, cubic,     |
    |          | distances (two       | ranked without          | mean image stacker         |
    |          | streaming passes)    | averaging               | (streamed)                 |
    +----------+----------------------+-------------------------+----------------------------+
    | 0.2.0    | as 0.1.0 when every  | DistanceWithRepulsion-  | as 0.1.0 for stored        |
    | (latest) | particle has a       | ClassSelector (removes  | classes; for a neighbour   |
    |          | stored class, else   | nothing from disjoint   | network BFSRAverager2D     |
    |          | RIRClass2D (a        | stored classes; avoids  | (reference="first": each   |
    |          | neighbour network)   | overlapping networks)   | member aligned to the      |
    |          |                      |                         | particle itself)           |
    +----------+----------------------+-------------------------+----------------------------+

    Ranking never averages a class: only the classes read through ``images`` (or
    :meth:`save`) are averaged (ASPIRE's default averages every class to rank them).

    Parameters
    ----------
    src
        The particles.
    version
        A version of the table; None or ``"latest"`` = the newest.
    classifier, class_selector, averager
        Override one part (None = the version's).

    Raises
    ------
    ValueError
        Unknown version.
    """

    VERSIONS: ClassVar[dict[str, _Configuration]] = {
        "0.1.0": _Configuration(lambda src: StoredClass2D(src, distances=True),
                                lambda averager: DistanceClassSelector(),
                                lambda src: StoredAlignmentAverager2D(src)),
        "0.2.0": _Configuration(
            lambda src: StoredClass2D(src, distances=True) if _has_classes(src)
            else RIRClass2D(src),
            lambda averager: DistanceWithRepulsionClassSelector(),
            lambda src: StoredAlignmentAverager2D(src) if _has_classes(src)
            else BFSRAverager2D(src, reference="first")),
    }
    LATEST: ClassVar[str] = "0.2.0"

    def __init__(self, src: ParticleTable, version: str | None = None,
                 classifier: Class2D | None = None, class_selector: ClassSelector | None = None,
                 averager: Averager2D | None = None) -> None:
        version = self.LATEST if version in (None, "latest") else version
        if version not in self.VERSIONS:
            raise ValueError(f"unknown DefaultClassAvgSource version {version!r}; known: "
                             f"{', '.join(self.VERSIONS)} (or 'latest')")
        self.version = version
        super().__init__(src, classifier, class_selector, averager)

    def _default_classifier(self, src: ParticleTable) -> Class2D:
        return self.VERSIONS[self.version].classifier(src)

    def _default_selector(self, averager: Averager2D) -> ClassSelector:
        return self.VERSIONS[self.version].selector(averager)

    def _default_averager(self, src: ParticleTable) -> Averager2D:
        return self.VERSIONS[self.version].averager(src)
