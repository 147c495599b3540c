"""Class-average sources: laziness, presets, shrinking selections, saving, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import csplugin
from csplugin.averaging import (
    BFRAverager2D,
    ClassAvgSource,
    ClassTable,
    DebugClassAvgSource,
    DefaultClassAvgSource,
    DistanceClassSelector,
    GlobalVarianceClassSelector,
    PrecomputedClass2D,
    StoredAlignmentAverager2D,
    StoredClass2D,
    TopWithRepulsionClassSelector,
    VarianceImageQualityFunction,
)
from csplugin.core.particles import ParticleTable
from csplugin.jobs.class_averages import class_averages
from formats.cs import read_cs
from formats.mrc import open_stack
from formats.star import read_star


class CountingAverager(StoredAlignmentAverager2D):
    """Records the key of every class it averages."""

    def __init__(self, src: ParticleTable, **options: object) -> None:
        super().__init__(src, **options)
        self.averaged: list[int] = []

    def average(self, class_indices, class_refl=None, keys=None) -> np.ndarray:
        self.averaged += np.asarray(keys).tolist()
        return super().average(class_indices, class_refl, keys)


class CountingClassifier(StoredClass2D):
    calls = 0

    def classify(self) -> ClassTable:
        self.calls += 1
        return super().classify()


@pytest.fixture(scope="module")
def six(job) -> ParticleTable:
    """The clean job with each class split in two (same class frame): 6 classes of 20,
    tightest classes being the compact ones."""
    table = csplugin.open_particles(job.particles_cs)
    index = table.particles["class_index"].to_numpy()
    split = np.zeros_like(index)
    for k in range(3):
        members = np.flatnonzero(index == k)
        split[members] = 2 * k + (np.arange(members.size) % 2)
    return table.with_columns(class_index=split)


def test_debug_source_is_the_class_averages_job_in_class_order(job, tmp_path) -> None:
    table = csplugin.open_particles(job.particles_star, project_dir=job.project)
    expected = class_averages(table, tmp_path).averages
    avgs = DebugClassAvgSource(table)
    assert avgs.n == 3 and avgs.L == 64
    np.testing.assert_array_equal(avgs.selection_indices, [0, 1, 2])
    np.testing.assert_array_equal(avgs.images[:], expected)
    np.testing.assert_array_equal(avgs.images[1], expected[1])
    np.testing.assert_array_equal(avgs.images[-1], expected[2])
    np.testing.assert_array_equal(avgs.images[[2, 0]], expected[[2, 0]])
    assert avgs.images[5:].shape == (0, 64, 64)
    with pytest.raises(IndexError):
        avgs.images[3]
    assert [len(c) for c in avgs.class_indices] == [40, 40, 40]
    assert not avgs.class_refl.values.any()


def test_evaluation_is_lazy_and_happens_once(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    classifier = CountingClassifier(table, distances=False)
    averager = CountingAverager(table)
    avgs = ClassAvgSource(table, classifier, DistanceClassSelector(), averager)
    assert classifier.calls == 0 and averager.averaged == []
    avgs.class_indices
    avgs.class_distances
    assert classifier.calls == 1 and averager.averaged == []
    with pytest.raises(ValueError, match="distances"):  # classifier computed none
        avgs.selection_indices


def test_default_source_is_a_versioned_class(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    latest = DefaultClassAvgSource(table)
    assert isinstance(latest, DefaultClassAvgSource) and isinstance(latest, ClassAvgSource)
    assert latest.version == DefaultClassAvgSource.LATEST == "0.2.0"
    assert DefaultClassAvgSource(table, version="latest").version == "0.2.0"
    assert "0.1.0" in DefaultClassAvgSource.__doc__ and "0.2.0" in DefaultClassAvgSource.__doc__
    assert isinstance(latest.class_selector, DistanceClassSelector)  # with repulsion in 0.2.0
    old = DefaultClassAvgSource(table, version="0.1.0")
    assert type(old.class_selector) is DistanceClassSelector
    with pytest.raises(ValueError, match="known: 0.1.0, 0.2.0"):
        DefaultClassAvgSource(table, version="0.14.0")


def test_default_source_averages_only_the_classes_read(six) -> None:
    """ASPIRE's default averages every class to rank them; this one ranks by distances."""
    averager = CountingAverager(six)
    avgs = DefaultClassAvgSource(six, averager=averager)
    assert avgs.n == 6
    best = avgs.images[:2]
    assert len(averager.averaged) == 2
    np.testing.assert_array_equal(averager.averaged, avgs.class_table.labels[
        avgs.selection_indices[:2]])
    assert np.all(np.diff(avgs.quality_scores) >= 0)  # tightest first
    assert best.shape == (2, 64, 64)


def test_global_selection_serves_its_averages_from_the_heap(six) -> None:
    averager = CountingAverager(six)
    selector = GlobalVarianceClassSelector(averager)
    avgs = ClassAvgSource(six, StoredClass2D(six, distances=False), selector, averager)
    images = avgs.images[:]
    assert sorted(averager.averaged) == list(range(6))  # each class once, for the ranking
    variance = VarianceImageQualityFunction()(images)
    np.testing.assert_allclose(variance, avgs.quality_scores, rtol=1e-6)
    assert np.all(np.diff(variance) <= 0)
    other = CountingAverager(six)  # a different averager recomputes
    avgs2 = ClassAvgSource(six, StoredClass2D(six, distances=False),
                           GlobalVarianceClassSelector(averager), other)
    np.testing.assert_allclose(avgs2.images[:2], images[:2])
    assert len(other.averaged) == 2


def test_a_shrinking_selection_still_serves_every_average(job) -> None:
    """ASPIRE raises IndexError here: it indexes a table cut to the new n with row ids."""
    table = csplugin.open_particles(job.particles_cs)
    index = table.particles["class_index"].to_numpy()
    rng = np.random.default_rng(0)
    # a neighbour network over class 1's particles: each row = a particle + 4 of its class
    members = np.flatnonzero(index == 1)
    network = np.array([[p, *rng.choice(members[members != p], 4, replace=False)]
                        for p in members])
    classifier = PrecomputedClass2D(table, network)
    avgs = ClassAvgSource(table, classifier, TopWithRepulsionClassSelector(),
                          StoredAlignmentAverager2D(table))
    n = avgs.n
    assert n < len(network)
    assert avgs.selection_indices.max() >= n  # the condition of ASPIRE's IndexError
    images = avgs.images[:n]
    rows = avgs.selection_indices
    direct = StoredAlignmentAverager2D(table).average([network[r] for r in rows])
    np.testing.assert_allclose(images, direct)
    assert avgs.quality_scores.shape == (n,)


def test_parts_are_type_checked(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    with pytest.raises(TypeError):
        ClassAvgSource(table, class_selector=VarianceImageQualityFunction())
    with pytest.raises(TypeError):
        ClassAvgSource(table.particles)
    other = csplugin.open_particles(job.particles_cs)
    with pytest.raises(ValueError, match="source.s src"):
        ClassAvgSource(table, averager=StoredAlignmentAverager2D(other))


def test_save_writes_the_selection_best_first(six, tmp_path) -> None:
    avgs = DefaultClassAvgSource(six, averager=BFRAverager2D(six))
    saved = avgs.save(tmp_path, n=4)
    order = avgs.selection_indices[:4]
    np.testing.assert_array_equal(saved.rows, order)
    np.testing.assert_array_equal(saved.labels, avgs.class_table.labels[order])
    written = open_stack(saved.mrcs).read(range(4))
    np.testing.assert_allclose(written, saved.averages)
    np.testing.assert_allclose(written, avgs.images[:4], atol=1e-6)
    star = read_star(saved.star)["model_classes"]
    np.testing.assert_array_equal(star["rlnClassNumber"], saved.labels + 1)
    np.testing.assert_allclose(star["rlnClassSelectionScore"], avgs.quality_scores[:4], rtol=1e-5)
    cs = read_cs(saved.cs)
    np.testing.assert_array_equal(cs["alignments2D/class"], saved.labels)
    np.testing.assert_array_equal(cs["selection/rank"], np.arange(4))
    np.testing.assert_array_equal(cs["alignments2D/num_particles"], 20)
    with pytest.raises(Exception, match="exist"):
        avgs.save(tmp_path)
    inverted = avgs.save(tmp_path, n=1, overwrite=True, invert_contrast=True)
    np.testing.assert_allclose(inverted.averages[0], -saved.averages[0], atol=1e-6)


# ----------------------------------------------------------------------------------- CLI
def _run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csplugin", "class-averages", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_select_keep_writes_the_ranked_classes(noisy_job, tmp_path) -> None:
    done = _run(noisy_job.particles_cs, "-o", tmp_path, "--select", "global-variance",
                "--keep", "2", "-q")
    assert done.returncode == 0, done.stderr
    table = csplugin.open_particles(noisy_job.particles_cs)
    everything = class_averages(table, tmp_path / "all").averages
    variance = everything.reshape(3, -1).var(axis=1)
    best = np.argsort(-variance)[:2]
    written = open_stack(tmp_path / "class_averages.mrcs").read(range(2))
    np.testing.assert_allclose(written, everything[best], atol=1e-6)
    cs = read_cs(tmp_path / "class_averages.cs")
    np.testing.assert_array_equal(cs["alignments2D/class"], best)
    assert "rank  class" in done.stdout


def test_cli_distance_selection_and_refusals(noisy_job, tmp_path) -> None:
    done = _run(noisy_job.particles_star, "--project-dir", noisy_job.project, "-o", tmp_path,
                "--select", "distance", "--repulsion", "3", "-q")
    assert done.returncode == 0, done.stderr
    star = read_star(tmp_path / "class_averages.star")["model_classes"]
    assert sorted(star["rlnClassNumber"]) == [1, 2, 3]  # disjoint classes: nothing repelled
    assert np.all(np.diff(star["rlnClassSelectionScore"]) >= 0)
    for args in (["--repulsion", "2"], ["--keep", "1"], ["--select", "best"],
                 ["--select", "top", "--keep", "0"], ["--select", "top", "--compare",
                                                       noisy_job.class_images]):
        refused = _run(noisy_job.particles_cs, "-o", tmp_path / "x", *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert "error:" in refused.stderr


@pytest.fixture(scope="module")
def noisy_job(tmp_path_factory: pytest.TempPathFactory):
    from csplugin.synthetic import make_job

    return make_job(tmp_path_factory.mktemp("cli"), n_per_class=30, box=48, noise_sigma=0.5,
                    seed=2)


def test_default_source_classifies_unclassified_particles_with_rir(tmp_path: Path) -> None:
    """Version 0.2.0: no stored classes -> RIRClass2D neighbour network; its selected
    classes gather particles of one true class (centred particles: RIR is not shift-invariant)."""
    from csplugin.averaging import DefaultClassAvgSource, RIRClass2D
    from csplugin.core.particles import open_particles
    from csplugin.synthetic import make_job

    job = make_job(tmp_path, n_per_class=60, box=64, noise_sigma=0.0, max_shift=0.0)  # > n_nbor
    unclassified = open_particles(job.particles_cs).with_columns(class_index=-1)
    source = DefaultClassAvgSource(unclassified)
    assert source.version == "0.2.0"
    indices = source.class_indices
    assert isinstance(source.classifier, RIRClass2D)
    truth = job.classes
    rows = source.selection_indices[:10]
    purity = np.mean([np.mean(truth[np.asarray(indices[r])] == truth[r]) for r in rows])
    assert purity > 0.9, purity
    assert source.images[:2].shape == (2, job.box, job.box)
