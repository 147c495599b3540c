"""Class selectors on hand-built class tables with known answers."""

from __future__ import annotations

import numpy as np
import pytest

import csplugin
from csplugin.averaging import (
    SELECTIONS,
    Averager2D,
    ClassSelector,
    ClassTable,
    DistanceClassSelector,
    DistanceWithRepulsionClassSelector,
    GlobalClassSelector,
    GlobalVarianceClassSelector,
    GlobalWithRepulsionClassSelector,
    NeighborVarianceClassSelector,
    RandomClassSelector,
    TopClassSelector,
    TopWithRepulsionClassSelector,
    VarianceImageQualityFunction,
    make_selector,
)


class ScaledAverager(Averager2D):
    """Fake averager: class with label k averages to ``scale[k] * checkerboard``."""

    def __init__(self, src, scale: np.ndarray) -> None:
        super().__init__(src)
        self.scale = scale
        self.calls: list[int] = []

    def average(self, class_indices, class_refl=None, keys=None) -> np.ndarray:
        keys = np.asarray(keys)
        self.calls += keys.tolist()
        checker = (np.indices((self.box, self.box)).sum(axis=0) % 2 * 2.0 - 1.0)
        return (self.scale[keys, None, None] * checker).astype(np.float32)


@pytest.fixture(scope="module")
def src(job):
    return csplugin.open_particles(job.particles_cs)


def _stored(distances: list[list[float]]) -> ClassTable:
    members, start = [], 0
    for d in distances:
        members.append(np.arange(start, start + len(d)))
        start += len(d)
    return ClassTable.from_rows(members, distances=distances)


def test_top_and_random_orders() -> None:
    table = _stored([[0.1], [0.2], [0.3], [0.4], [0.5]])
    top = TopClassSelector()
    np.testing.assert_array_equal(top.select(table), np.arange(5))
    np.testing.assert_array_equal(top.quality_scores, np.zeros(5))
    a = RandomClassSelector(seed=7).select(table)
    assert sorted(a) == list(range(5))
    np.testing.assert_array_equal(RandomClassSelector(seed=7).select(table), a)
    orders = {tuple(RandomClassSelector(seed=s).select(table)) for s in range(10)}
    assert len(orders) > 1


def test_distance_and_variance_selectors_known_answers() -> None:
    table = _stored([[0.5, 0.5, 0.5], [0.1, 0.3], [0.2, 0.2, 0.2, 1.4], [np.nan]])
    dist = DistanceClassSelector()
    np.testing.assert_array_equal(dist.select(table), [1, 0, 2, 3])  # means .2, .5, .5, NaN
    np.testing.assert_allclose(dist.quality_scores[:3], [0.2, 0.5, 0.5])
    assert np.isnan(dist.quality_scores[3])
    var = NeighborVarianceClassSelector()
    np.testing.assert_array_equal(var.select(table), [0, 1, 2, 3])  # 0, .01, .27, NaN
    np.testing.assert_allclose(var.quality_scores[:3], [0.0, 0.01, 0.27])


def test_anchored_selectors_ignore_the_reference_self_distance() -> None:
    network = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    dist = np.array([[0, 0.3, 0.3], [0, 0.1, 0.5], [0, 0.2, 0.2]])
    table = ClassTable.from_rows(network, distances=dist, anchored=True)
    var = NeighborVarianceClassSelector()
    np.testing.assert_array_equal(var.select(table), [0, 2, 1])  # 0, 0, .04 without self
    np.testing.assert_allclose(var.quality_scores, [0, 0, 0.04])
    np.testing.assert_allclose(DistanceClassSelector().select(table), [2, 0, 1])


def _network() -> ClassTable:
    """6 particles, 3 neighbours each (column 0 = itself); the best-first order is by
    ascending mean distance: rows 3, 0, 4, 1, 5, 2."""
    network = np.array([[0, 1, 2], [1, 0, 5], [2, 3, 0], [3, 4, 0], [4, 3, 5], [5, 1, 2]])
    mean = np.array([0.2, 0.4, 0.6, 0.1, 0.3, 0.5])
    dist = np.stack([np.zeros(6), mean, mean], axis=1)
    return ClassTable.from_rows(network, distances=dist, anchored=True)


def test_greedy_repulsion_shrinks_and_resets_its_state() -> None:
    table = _network()
    plain = DistanceClassSelector().select(table)
    np.testing.assert_array_equal(plain, [3, 0, 4, 1, 5, 2])
    selector = DistanceWithRepulsionClassSelector()
    # 3 kept, excludes {3, 4, 0}; 0 and 4 skipped; 1 kept, excludes {1, 0, 5}; 5 skipped;
    # 2 kept
    np.testing.assert_array_equal(selector.select(table), [3, 1, 2])
    np.testing.assert_allclose(selector.quality_scores, [0.1, 0.4, 0.6])
    np.testing.assert_array_equal(selector.select(table), [3, 1, 2])  # same again
    narrow = DistanceWithRepulsionClassSelector(exclude_k=1)  # excludes only the reference
    np.testing.assert_array_equal(narrow.select(table), plain)
    two = DistanceWithRepulsionClassSelector(exclude_k=2)
    # 3 excl {3,4}; 0 kept excl {0,1}; 4 skip; 1 skip; 5 kept excl {5,1}; 2 kept
    np.testing.assert_array_equal(two.select(table), [3, 0, 5, 2])
    with pytest.raises(ValueError):
        DistanceWithRepulsionClassSelector(exclude_k=0)


def test_repulsion_on_disjoint_stored_classes_removes_nothing() -> None:
    table = _stored([[0.1, 0.2], [0.3], [0.2, 0.2]])
    np.testing.assert_array_equal(TopWithRepulsionClassSelector().select(table), [0, 1, 2])


def test_global_selector_ranks_every_average_once_and_keeps_the_best(src) -> None:
    table = _stored([[0.1]] * 6)
    scale = np.array([1.0, 5.0, 2.0, 4.0, 3.0, 0.5])
    averager = ScaledAverager(src, scale)
    image_bytes = 4 * 64 * 64
    selector = GlobalClassSelector(averager, VarianceImageQualityFunction(),
                                   heap_size_limit_bytes=3 * image_bytes, batch_size=4)
    np.testing.assert_array_equal(selector.select(table), [1, 3, 4, 2, 0, 5])
    np.testing.assert_allclose(selector.quality_scores, scale[[1, 3, 4, 2, 0, 5]] ** 2)
    assert sorted(averager.calls) == list(range(6))  # each class averaged exactly once
    for row in (1, 3, 4):
        np.testing.assert_allclose(selector.cached(row).std(), scale[row])
    assert all(selector.cached(row) is None for row in (0, 2, 5))
    none_kept = GlobalVarianceClassSelector(averager, heap_size_limit_bytes=0)
    none_kept.select(table)
    assert all(none_kept.cached(row) is None for row in range(6))


def test_global_with_repulsion_combines_both(src) -> None:
    table = _network()
    scale = np.array([1.0, 6.0, 2.0, 5.0, 3.0, 4.0])  # order 1, 3, 5, 4, 2, 0
    selector = GlobalWithRepulsionClassSelector(ScaledAverager(src, scale),
                                                VarianceImageQualityFunction())
    # 1 excl {1,0,5}; 3 kept excl {3,4,0}; 5 skip; 4 skip; 2 kept; 0 skip
    np.testing.assert_array_equal(selector.select(table), [1, 3, 2])


def test_selection_is_validated() -> None:
    class Twice(ClassSelector):
        def _select(self, classes):
            return np.array([0, 0]), np.zeros(2)

    class Outside(ClassSelector):
        def _select(self, classes):
            return np.array([5]), np.zeros(1)

    table = _stored([[0.1], [0.2]])
    with pytest.raises(ValueError, match="twice"):
        Twice().select(table)
    with pytest.raises(ValueError, match="outside"):
        Outside().select(table)
    with pytest.raises(RuntimeError):
        TopClassSelector().quality_scores
    with pytest.raises(TypeError):
        TopClassSelector().select([np.array([0])])


def test_make_selector_builds_each_named_selection(src) -> None:
    averager = ScaledAverager(src, np.ones(3))
    for name in SELECTIONS:
        plain = make_selector(name, averager)
        repelled = make_selector(name, averager, repulsion=2)
        assert repelled.exclude_k == 2 and "WithRepulsion" in type(repelled).__name__
        assert not hasattr(plain, "exclude_k")
    with pytest.raises(ValueError):
        make_selector("best")
