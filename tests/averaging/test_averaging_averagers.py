"""Averagers: the stored-alignment averager is the class-averages engine; every averager
honours its image stacker per pixel; the searching averagers recover the stored poses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mstats

import csplugin
from csplugin.averaging import (
    AligningAverager2D,
    BFRAverager2D,
    BFSRAverager2D,
    BFSReddyChatterjiAverager2D,
    MedianImageStacker,
    PrecomputedClass2D,
    ReddyChatterjiAverager2D,
    StoredAlignmentAverager2D,
    StoredClass2D,
    WinsorizedImageStacker,
)
from csplugin.averaging.engine import make_stacker
from csplugin.core import conventions as cv
from csplugin.core.images import check_stacks, read_chunk
from csplugin.core.particles import ParticleTable
from csplugin.engines.transform import align_images
from csplugin.jobs.class_averages import class_averages
from csplugin.synthetic import SyntheticJob, make_job
from formats.mrc import open_stack, write_stack

AVERAGERS = [StoredAlignmentAverager2D, BFRAverager2D, BFSRAverager2D, ReddyChatterjiAverager2D,
             BFSReddyChatterjiAverager2D]
SEARCHING = AVERAGERS[1:]


def _members(table: ParticleTable, k: int) -> np.ndarray:
    return np.flatnonzero(table.particles["class_index"].to_numpy() == k)


def _rewrite(table: ParticleTable, path: Path, change) -> ParticleTable:
    """``table`` with its raw images replaced by ``change(images)`` in one new stack."""
    images = read_chunk(table, np.arange(len(table)), check_stacks(table))
    write_stack(path, change(images).astype(np.float32), table.pixel_size())
    return table.with_columns(stack=str(path), stack_index=np.arange(len(table)))


def _aligned(averager: AligningAverager2D, key: int) -> np.ndarray:
    """A class's members aligned independently with the averager's kept alignments."""
    members = averager.members[key]
    raw = averager.src.images[members]
    raw[averager.mirrors[key]] = cv.mirror_y(raw[averager.mirrors[key]])
    return align_images(raw, averager.rotations[key], averager.shifts[key]).astype(np.float64)


def _angle_errors(averager: AligningAverager2D) -> np.ndarray:
    """Largest |found - stored| angle per class (degrees); class 0 of the synthetic job is a
    two-start helix, symmetric under a 180° turn, so its error is taken modulo 180°."""
    errors = []
    angle = averager.src.particles["angle"].to_numpy()
    for key, members in averager.members.items():
        period = np.pi if averager.src.particles["class_index"].iloc[members[0]] == 0 \
            else 2 * np.pi
        d = (averager.rotations[key] - angle[members] + period / 2) % period - period / 2
        errors.append(np.degrees(np.abs(d)).max())
    return np.array(errors)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> SyntheticJob:
    return make_job(tmp_path_factory.mktemp("noisy"), n_per_class=40, box=64, noise_sigma=0.5,
                    seed=5)


@pytest.fixture(scope="module")
def outlier(job, tmp_path_factory: pytest.TempPathFactory) -> ParticleTable:
    """The clean job with one particle of class 1 replaced by a bright constant image."""
    table = csplugin.open_particles(job.particles_cs)
    victim = _members(table, 1)[3]

    def change(images: np.ndarray) -> np.ndarray:
        images = images.copy()
        images[victim] = 40.0
        return images

    return _rewrite(table, tmp_path_factory.mktemp("outlier") / "outlier.mrcs", change)


# --------------------------------------------------------------------- stored alignments
@pytest.mark.parametrize("options", [
    {}, {"stacker": "median"}, {"stacker": "sigma-rejection", "sigma": 2.0},
    {"stacker": "winsorized", "percentile": 0.2}, {"weights": "posterior"},
    {"ctf": "phase-flip"}, {"ctf": "wiener"}, {"interpolation": "linear"},
])
def test_stored_averager_is_the_class_averages_engine(noisy, tmp_path, options) -> None:
    table = csplugin.open_particles(noisy.particles_cs)
    expected = class_averages(table, tmp_path, **options)
    averaging = {k: v for k, v in options.items() if k not in ("stacker", "sigma", "percentile")}
    stacker = make_stacker(options.get("stacker", "mean"), options.get("sigma", 3.0),
                           options.get("percentile", 0.1))
    averager = StoredAlignmentAverager2D(table, stacker, **averaging)
    classes = StoredClass2D(table, distances=False).classify()
    got = averager.average(classes.indices, classes.refl, classes.labels)
    np.testing.assert_allclose(got, expected.averages, rtol=0, atol=1e-5)
    if options.get("ctf") == "wiener":
        np.testing.assert_allclose([averager.snr[k] for k in range(3)], expected.snr)
    np.testing.assert_array_equal(averager.rotations[1], table.particles["angle"].to_numpy()[
        _members(table, 1)])
    assert (averager.agreement()["max_angle_error_deg"] == 0).all()


def test_stored_averager_refuses_mirrored_members(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    with pytest.raises(ValueError, match="mirrored"):
        StoredAlignmentAverager2D(table).average([np.array([0, 1])], [np.array([False, True])])


def test_averager_options_are_checked(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    with pytest.raises(ValueError, match="wiener"):
        StoredAlignmentAverager2D(table, MedianImageStacker(), ctf="wiener")
    with pytest.raises(ValueError):
        StoredAlignmentAverager2D(table, interpolation="nearest")
    with pytest.raises(ValueError):
        StoredAlignmentAverager2D(table, weights=np.ones(3))
    with pytest.raises(TypeError):
        StoredAlignmentAverager2D(table, image_stacker="median")
    with pytest.raises(TypeError):
        BFRAverager2D(table, radius=2)


# ------------------------------------------------------------------- stackers, per pixel
@pytest.mark.parametrize("cls", AVERAGERS)
def test_every_averager_honours_its_image_stacker_per_pixel(outlier, cls) -> None:
    """ASPIRE's BFSR/BFR/RC averagers drop image_stacker, and its stackers run on basis
    coefficients: here each averager's median is the per-pixel median of its own aligned
    members, and far from their mean (the outlier)."""
    members = _members(outlier, 1)
    median = cls(outlier, MedianImageStacker())
    got = median.average([members], keys=[1])[0]
    aligned = _aligned(median, 1)
    np.testing.assert_allclose(got, np.median(aligned, axis=0), atol=1e-5)
    mean = cls(outlier).average([members], keys=[1])[0]
    assert np.abs(mean - got).max() > 0.5  # the bright particle moves the mean, not the median


def test_winsorizing_is_per_pixel(outlier) -> None:
    """ASPIRE winsorizes the flattened stack against pooled percentiles."""
    members = _members(outlier, 1)
    averager = BFRAverager2D(outlier, WinsorizedImageStacker(0.1))
    got = averager.average([members], keys=[0])[0]
    aligned = _aligned(averager, 0)
    per_pixel = np.asarray(mstats.winsorize(aligned, limits=(0.1, 0.1), axis=0).mean(axis=0))
    flattened = np.asarray(mstats.winsorize(aligned, limits=(0.1, 0.1)).mean(axis=0))
    np.testing.assert_allclose(got, per_pixel, atol=1e-5)
    assert np.abs(flattened - per_pixel).max() > 0.1


# ------------------------------------------------------------------------- searching
@pytest.mark.parametrize("cls", SEARCHING)
def test_searching_averagers_recover_the_stored_psi_on_clean_data(job, cls) -> None:
    table = csplugin.open_particles(job.particles_cs)
    classes = StoredClass2D(table, distances=False).classify()
    averager = cls(table)
    averages = averager.average(classes.indices, classes.refl, classes.labels)
    assert _angle_errors(averager).max() < 1.5
    agreement = averager.agreement(tolerance_deg=1.0).set_index("key")
    assert (agreement.loc[[1, 2], "within_tolerance"] == 1).all()  # asymmetric classes
    truth = open_stack(job.class_images).read(range(3))
    for k in range(3):
        assert np.corrcoef(averages[k].ravel(), truth[k].ravel())[0, 1] > 0.99
    for k in (1, 2):  # the helix (0) is also periodic along its axis: shifts are ambiguous
        assert np.nanmin(averager.dot_products[k]) > 0.95


@pytest.mark.parametrize("cls", SEARCHING)
def test_searching_averagers_recover_the_stored_psi_on_noisy_data(noisy, cls) -> None:
    table = csplugin.open_particles(noisy.particles_cs)
    classes = StoredClass2D(table, distances=False).classify()
    averager = cls(table)
    averager.average(classes.indices, classes.refl, classes.labels)
    agreement = averager.agreement(tolerance_deg=5.0).set_index("key").loc[[1, 2]]
    assert (agreement["median_angle_error_deg"] < 3.0).all()
    assert (agreement["within_tolerance"] >= 0.9).all()


@pytest.mark.parametrize("cls, kwargs, tolerance", [
    (BFSRAverager2D, {"radius": 6, "shift_origin": "zero"}, 0.75),
    (BFSReddyChatterjiAverager2D, {"radius": 6, "shift_origin": "zero"}, 0.75),
    (ReddyChatterjiAverager2D, {}, 0.5),
])
def test_shift_searches_find_the_stored_shifts_from_zero(job, cls, kwargs, tolerance) -> None:
    table = csplugin.open_particles(job.particles_cs)
    averager = cls(table, **kwargs)
    members = _members(table, 2)
    averager.average([members], keys=[2])
    stored = table.particles[["shift_x", "shift_y"]].to_numpy()[members]
    assert np.abs(averager.shifts[2] - stored).max() < tolerance
    assert _angle_errors(averager).max() < 2.0


def test_mirrored_members_are_mirrored_before_the_search(job, tmp_path) -> None:
    table = csplugin.open_particles(job.particles_cs)
    members = _members(table, 1)
    flipped = members[::2]
    flip = np.isin(np.arange(len(table)), flipped)[:, None, None]
    table = _rewrite(table, tmp_path / "mirrored.mrcs",
                     lambda images: np.where(flip, cv.mirror_y(images), images))
    refl = np.isin(members, flipped)
    averager = BFRAverager2D(table)
    average = averager.average([members], [refl], keys=[1])[0]
    assert _angle_errors(averager).max() < 1.5
    truth = open_stack(job.class_images).read([1])[0]
    assert np.corrcoef(average.ravel(), truth.ravel())[0, 1] > 0.99
    ignoring = BFRAverager2D(table)  # flags dropped: the mirrored members cannot be aligned
    ignored = ignoring.average([members], keys=[1])[0]
    assert _angle_errors(ignoring).max() > 10
    assert np.corrcoef(ignored.ravel(), truth.ravel())[0, 1] < \
        np.corrcoef(average.ravel(), truth.ravel())[0, 1] - 0.01


def test_reference_first_aligns_to_member_zero(job) -> None:
    """A neighbour-network row: rotations relative to the reference particle's own frame,
    θ_j - θ_0, and member 0 fixed at 0 (ASPIRE's reference-anchored frame)."""
    table = csplugin.open_particles(job.particles_cs)
    members = _members(table, 1)[:10]
    network = PrecomputedClass2D(table, members[None, :]).classify()
    averager = ReddyChatterjiAverager2D(table, reference="first")
    average = averager.average(network.indices, network.refl, network.labels)[0]
    key = int(network.labels[0])
    angles = table.particles["angle"].to_numpy()[members]
    error = np.degrees(np.abs((averager.rotations[key] - (angles - angles[0]) + np.pi)
                              % (2 * np.pi) - np.pi))
    assert error.max() < 1.5 and averager.rotations[key][0] == 0
    reference = table.images[int(members[0])]
    assert np.corrcoef(average.ravel(), reference.ravel())[0, 1] > 0.99


def test_searching_averagers_validate_their_options(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    with pytest.raises(ValueError):
        BFSRAverager2D(table, reference="mean")
    with pytest.raises(ValueError):
        BFSRAverager2D(table, shift_origin="centre")
    with pytest.raises(ValueError):
        BFSRAverager2D(table, radius=-1)
