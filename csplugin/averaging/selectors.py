"""Class selectors: which classes to average, best first.

``selector.select(class_table) -> selection``: ``(k,)`` distinct class rows, best first,
``k <= n_classes`` (a selector may drop classes; the source then serves ``images[:k]``).
``selector.quality_scores`` holds the matching ``(k,)`` scores. Ties keep the input order;
NaN scores go last.

=======================================  ===============================================
selector                                 order
=======================================  ===============================================
:class:`TopClassSelector`                input order (score 0)
:class:`RandomClassSelector`             a random permutation (``seed``; score 0)
:class:`NeighborVarianceClassSelector`   ascending variance of the member distances
:class:`DistanceClassSelector`           ascending mean member distance (tightest first)
:class:`GlobalClassSelector`             descending quality of each class's average
=======================================  ===============================================

The distance selectors leave out the reference's own distance (0) of an anchored table
(ASPIRE's neighbour-variance includes it). :class:`GreedyClassRepulsionMixin` adds greedy
repulsion to any of them (the ``...WithRepulsionClassSelector`` classes).
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from csplugin.averaging.averagers import Averager2D
from csplugin.averaging.classes import ClassTable
from csplugin.averaging.quality import (
    BandedSNRImageQualityFunction,
    ImageQualityFunction,
    VarianceImageQualityFunction,
)

__all__ = [
    "ClassSelector", "TopClassSelector", "RandomClassSelector",
    "NeighborVarianceClassSelector", "DistanceClassSelector", "GreedyClassRepulsionMixin",
    "GlobalClassSelector", "GlobalVarianceClassSelector", "TopWithRepulsionClassSelector",
    "RandomWithRepulsionClassSelector", "NeighborVarianceWithRepulsionClassSelector",
    "DistanceWithRepulsionClassSelector", "GlobalWithRepulsionClassSelector", "SELECTIONS",
    "make_selector",
]


def _order(scores: np.ndarray, descending: bool) -> np.ndarray:
    """Stable order of ``scores``, NaN last."""
    key = np.where(np.isnan(scores), np.inf, -scores if descending else scores)
    return np.argsort(key, kind="stable")


class ClassSelector(ABC):
    """Base class: validates the selection and keeps the scores. Implement :meth:`_select`."""

    def __init__(self) -> None:
        self._selection: np.ndarray | None = None
        self._quality_scores: np.ndarray | None = None

    def select(self, classes: ClassTable) -> np.ndarray:
        """Choose and order classes.

        Parameters
        ----------
        classes
            The classification (:class:`~csplugin.averaging.classes.ClassTable`).

        Returns
        -------
        np.ndarray
            ``(k,)`` int64 distinct rows of ``classes``, best first, ``k <= len(classes)``.
        """
        if not isinstance(classes, ClassTable):
            raise TypeError(f"select() takes a ClassTable, got {type(classes).__name__}")
        selection, scores = self._select(classes)
        selection = np.asarray(selection, np.int64)
        scores = np.asarray(scores, np.float64)
        if selection.ndim != 1 or scores.shape != selection.shape:
            raise ValueError(f"{type(self).__name__} returned selection {selection.shape} "
                             f"and scores {scores.shape}")
        if selection.size and (selection.min() < 0 or selection.max() >= len(classes)):
            raise ValueError(f"{type(self).__name__} selected rows outside 0..{len(classes) - 1}")
        if np.unique(selection).size != selection.size:
            raise ValueError(f"{type(self).__name__} selected a class twice")
        self._selection, self._quality_scores = selection, scores
        return selection

    @abstractmethod
    def _select(self, classes: ClassTable) -> tuple[np.ndarray, np.ndarray]:
        """``(selection (k,), scores (k,))`` for ``classes``."""

    @property
    def quality_scores(self) -> np.ndarray:
        """``(k,)`` scores of the last selection, in selection order."""
        if self._quality_scores is None:
            raise RuntimeError("select() has not run yet")
        return self._quality_scores

    @property
    def selection(self) -> np.ndarray:
        """``(k,)`` rows of the last selection."""
        if self._selection is None:
            raise RuntimeError("select() has not run yet")
        return self._selection


class TopClassSelector(ClassSelector):
    """Every class, in input order (scores 0)."""

    def _select(self, classes: ClassTable) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(classes)), np.zeros(len(classes))


class RandomClassSelector(ClassSelector):
    """Every class, in a random order (``numpy.random.default_rng(seed)``; scores 0)."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed

    def _select(self, classes: ClassTable) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return rng.permutation(len(classes)), np.zeros(len(classes))


def _member_distances(classes: ClassTable, selector: ClassSelector) -> tuple[np.ndarray, ...]:
    dist = classes.own_distances()
    if np.isnan(classes.distances.values).all():
        raise ValueError(f"{type(selector).__name__} needs member distances; the classifier "
                         "computed none (e.g. StoredClass2D(distances=True))")
    return dist.values, dist.row_ids, dist.lengths


class NeighborVarianceClassSelector(ClassSelector):
    """Ascending variance of each class's member distances (population; the reference's
    own 0 left out when anchored): the most uniform classes first."""

    def _select(self, classes: ClassTable) -> tuple[np.ndarray, np.ndarray]:
        values, row, counts = _member_distances(classes, self)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.bincount(row, values, len(classes)) / counts
            var = np.bincount(row, (values - mean[row]) ** 2, len(classes)) / counts
        order = _order(var, descending=False)
        return order, var[order]


class DistanceClassSelector(ClassSelector):
    """Ascending mean member distance (the reference's own 0 left out when anchored): the
    tightest classes first."""

    def _select(self, classes: ClassTable) -> tuple[np.ndarray, np.ndarray]:
        values, row, counts = _member_distances(classes, self)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.bincount(row, values, len(classes)) / counts
        order = _order(mean, descending=False)
        return order, mean[order]


class GreedyClassRepulsionMixin:
    """Greedy repulsion on top of a selector's order.

    Classes are visited best first; a class is dropped when its reference (member 0) has
    already been excluded, otherwise it is kept and its first ``exclude_k`` members
    (default: all) are excluded. The excluded set is rebuilt on every :meth:`select`
    (ASPIRE kept it between calls), so selecting twice gives the same result. On disjoint
    stored classes nothing is dropped; on neighbour networks the selection shrinks.

    Put it first in the bases: ``class S(GreedyClassRepulsionMixin, SomeClassSelector)``.
    """

    def __init__(self, *args: Any, exclude_k: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if exclude_k is not None and exclude_k < 1:
            raise ValueError(f"exclude_k must be >= 1, got {exclude_k}")
        self.exclude_k = exclude_k
        self.excluded: set[int] = set()

    def _select(self, classes: ClassTable) -> tuple[np.ndarray, np.ndarray]:
        order, scores = super()._select(classes)  # type: ignore[misc]
        self.excluded = set()
        references = classes.references
        keep = []
        for position, row in enumerate(np.asarray(order).tolist()):
            if int(references[row]) in self.excluded:
                continue
            keep.append(position)
            self.excluded.update(classes.indices[row][:self.exclude_k].tolist())
        return np.asarray(order)[keep], np.asarray(scores)[keep]


class GlobalClassSelector(ClassSelector):
    """Average every class with ``averager``, score each average, best (highest) first.

    The best averages are kept, up to ``heap_size_limit_bytes``, and served by the source
    without averaging again when it uses the same averager (:meth:`cached`). Classes are
    averaged in batches of ``batch_size`` (default: 64 MiB of averages).

    Parameters
    ----------
    averager
        Any :class:`~csplugin.averaging.Averager2D`.
    quality_function
        Any :class:`~csplugin.averaging.ImageQualityFunction`.
    heap_size_limit_bytes
        Memory for kept averages (``L² × 4`` bytes each); 0 keeps none.
    """

    def __init__(self, averager: Averager2D, quality_function: ImageQualityFunction,
                 heap_size_limit_bytes: int = 256 << 20, batch_size: int | None = None) -> None:
        super().__init__()
        if not isinstance(averager, Averager2D):
            raise TypeError(f"averager must be an Averager2D, got {type(averager).__name__}")
        if not isinstance(quality_function, ImageQualityFunction):
            raise TypeError("quality_function must be an ImageQualityFunction")
        self.averager = averager
        self.quality_function = quality_function
        self.heap_size_limit_bytes = int(heap_size_limit_bytes)
        self.batch_size = batch_size
        self._heap: list[tuple[float, int]] = []
        self._kept: dict[int, np.ndarray] = {}

    def _select(self, classes: ClassTable) -> tuple[np.ndarray, np.ndarray]:
        image_bytes = 4 * self.averager.box**2
        capacity = self.heap_size_limit_bytes // image_bytes
        batch = self.batch_size or max(1, (64 << 20) // image_bytes)
        self._heap, self._kept = [], {}
        scores = np.empty(len(classes))
        for start in range(0, len(classes), batch):
            rows = np.arange(start, min(start + batch, len(classes)))
            averages = self.averager.average(classes.indices[rows], classes.refl[rows],
                                             classes.labels[rows])
            scores[rows] = self.quality_function(averages)
            for row, score, image in zip(rows.tolist(), scores[rows].tolist(), averages):
                self._keep(row, -np.inf if np.isnan(score) else score, image, capacity)
        order = _order(scores, descending=True)
        return order, scores[order]

    def _keep(self, row: int, score: float, image: np.ndarray, capacity: int) -> None:
        if capacity <= 0:
            return
        item = (score, -row)  # on equal scores the earlier row wins
        if len(self._heap) < capacity:
            heapq.heappush(self._heap, item)
            self._kept[row] = image
        elif item > self._heap[0]:
            dropped = heapq.heappushpop(self._heap, item)
            del self._kept[-dropped[1]]
            self._kept[row] = image

    def cached(self, row: int) -> np.ndarray | None:
        """The kept average ``(L, L)`` of class ``row``, or None."""
        return self._kept.get(row)


class GlobalVarianceClassSelector(GlobalClassSelector):
    """:class:`GlobalClassSelector` scoring by :class:`VarianceImageQualityFunction`."""

    def __init__(self, averager: Averager2D, heap_size_limit_bytes: int = 256 << 20,
                 batch_size: int | None = None) -> None:
        super().__init__(averager, VarianceImageQualityFunction(), heap_size_limit_bytes,
                         batch_size)


class TopWithRepulsionClassSelector(GreedyClassRepulsionMixin, TopClassSelector):
    """Input order with greedy repulsion."""


class RandomWithRepulsionClassSelector(GreedyClassRepulsionMixin, RandomClassSelector):
    """Random order with greedy repulsion."""


class NeighborVarianceWithRepulsionClassSelector(GreedyClassRepulsionMixin,
                                                 NeighborVarianceClassSelector):
    """Ascending distance variance with greedy repulsion."""


class DistanceWithRepulsionClassSelector(GreedyClassRepulsionMixin, DistanceClassSelector):
    """Ascending mean distance with greedy repulsion."""


class GlobalWithRepulsionClassSelector(GreedyClassRepulsionMixin, GlobalClassSelector):
    """Descending quality of the averages with greedy repulsion."""


#: Names accepted by :func:`make_selector` (``csplugin class-averages --select``).
SELECTIONS: tuple[str, ...] = ("top", "random", "neighbor-variance", "distance",
                               "global-variance", "global-snr")


def make_selector(name: str, averager: Averager2D | None = None,
                  repulsion: int | None = None, seed: int | None = 0) -> ClassSelector:
    """The selector behind ``--select NAME [--repulsion K]``.

    ``global-variance`` / ``global-snr`` score the averages of ``averager`` with
    :class:`VarianceImageQualityFunction` / :class:`BandedSNRImageQualityFunction`;
    ``random`` uses ``seed``. ``repulsion`` adds :class:`GreedyClassRepulsionMixin` with
    ``exclude_k = repulsion``.
    """
    if name not in SELECTIONS:
        raise ValueError(f"unknown selection {name!r}; choose one of {', '.join(SELECTIONS)}")
    repel = {} if repulsion is None else {"exclude_k": repulsion}
    if name.startswith("global-"):
        if averager is None:
            raise ValueError(f"--select {name} needs an averager")
        quality = VarianceImageQualityFunction() if name == "global-variance" \
            else BandedSNRImageQualityFunction()
        cls = GlobalClassSelector if repulsion is None else GlobalWithRepulsionClassSelector
        return cls(averager, quality, **repel)
    if name == "random":
        cls = RandomClassSelector if repulsion is None else RandomWithRepulsionClassSelector
        return cls(seed, **repel)
    plain, repelling = {
        "top": (TopClassSelector, TopWithRepulsionClassSelector),
        "neighbor-variance": (NeighborVarianceClassSelector,
                              NeighborVarianceWithRepulsionClassSelector),
        "distance": (DistanceClassSelector, DistanceWithRepulsionClassSelector),
    }[name]
    return plain() if repulsion is None else repelling(**repel)
