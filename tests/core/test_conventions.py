"""The geometry, end to end through the readers: signs, order, units and numbering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from csplugin.core import conventions as cv
from csplugin.core.images import check_stacks, read_chunk
from csplugin.core.particles import open_particles
from csplugin.engines.transform import align_images
from csplugin.synthetic import class_models, render
from formats.cs import read_cs, write_cs


def _class_average(cs_path: Path, k: int) -> np.ndarray:
    """Mean of the aligned particles of class k (0-based), via the .cs reader."""
    table = open_particles(cs_path).select_classes([k])
    p = table.particles
    images = read_chunk(table, np.arange(len(table)), check_stacks(table))
    aligned = align_images(images, p["angle"].to_numpy(), p[["shift_x", "shift_y"]].to_numpy())
    return aligned.mean(axis=0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _disc(n: int, margin: int) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - n // 2
    return x**2 + y**2 < (n // 2 - margin) ** 2


def _copy_job_cs(job, tmp_path: Path, shift: np.ndarray, psize_alignment: float | None = None
                 ) -> Path:
    """The job's particles .cs with new alignments2D/shift, beside its passthrough."""
    data = read_cs(job.particles_cs)
    data["alignments2D/shift"] = shift
    if psize_alignment is not None:
        data["alignments2D/psize_A"] = psize_alignment
    target = job.particles_cs.parent / f"J3_{tmp_path.name[-12:]}_particles.cs"
    write_cs(target, data)
    return target


@pytest.mark.parametrize("k", [1, 2])
def test_stored_alignments_rebuild_the_class(job, k: int) -> None:
    truth = render(class_models(job.box)[k], job.box)[0]
    average = _class_average(job.particles_cs, k)
    disc = _disc(job.box, 6)
    assert np.abs(average - truth)[disc].max() < 5e-3 * truth.max()  # cubic interpolation error


def test_cryosparc_shift_invariant(job, tmp_path: Path) -> None:
    """Structura's notebook: adding R(-θ)d to every shift moves the class by +d, sharp;
    adding d unrotated blurs it."""
    k, d = 1, np.array([3.0, -2.0])
    data = read_cs(job.particles_cs)
    shift = data["alignments2D/shift"].astype(np.float64)
    moved = shift + cv.rotate_shift_into_class_frame(data["alignments2D/pose"].astype(float), d)
    rotated = _class_average(_copy_job_cs(job, tmp_path, moved), k)
    blurred = _class_average(_copy_job_cs(job, tmp_path / "u", shift + d), k)
    target = render(class_models(job.box)[k], job.box, shifts=-d[None])[0]  # C(q - d)
    disc = _disc(job.box, 9)
    assert _corr(rotated[disc], target[disc]) > 0.9999
    assert _corr(blurred[disc], target[disc]) < 0.9
    wrong_sign = render(class_models(job.box)[k], job.box, shifts=d[None])[0]  # C(q + d)
    assert _corr(rotated[disc], wrong_sign[disc]) < 0.9


def test_alignment_pixel_size_scales_the_shift(job, tmp_path: Path) -> None:
    """Shifts are stored in pixels of alignments2D/psize_A, not of the particle images."""
    data = read_cs(job.particles_cs)
    half = data["alignments2D/shift"] / 2
    coarse = _copy_job_cs(job, tmp_path, half, psize_alignment=2 * job.pixel_size)
    a = open_particles(job.particles_cs).particles
    b = open_particles(coarse).particles
    np.testing.assert_allclose(a[["shift_x", "shift_y"]], b[["shift_x", "shift_y"]], atol=1e-6)


def test_numbering_and_units_between_programs(job) -> None:
    cs = open_particles(job.particles_cs).particles
    star = open_particles(job.particles_star).particles
    np.testing.assert_array_equal(cs["class_index"], job.classes)
    np.testing.assert_array_equal(star["class_index"], job.classes)  # rlnClassNumber - 1
    np.testing.assert_array_equal(cs["stack_index"], star["stack_index"])  # blob/idx == N - 1
    np.testing.assert_allclose(cs["angle"], star["angle"], atol=1e-7)
    np.testing.assert_allclose(star[["shift_x", "shift_y"]], job.shifts, atol=1e-5)
    assert (cs["stack"] == star["stack"]).all()


def test_to_and_from_each_program_are_inverse() -> None:
    rng = np.random.default_rng(1)
    angle, shift = rng.uniform(-np.pi, np.pi, 9), rng.normal(size=(9, 2))
    psi, origin = cv.to_relion_pose(angle, shift)
    np.testing.assert_allclose(psi, np.rad2deg(angle))  # psi = +deg(pose)
    np.testing.assert_allclose(origin, shift)  # origin = +shift
    back = cv.from_relion_pose(psi, origin)
    np.testing.assert_allclose(back[0], angle)
    np.testing.assert_allclose(back[1], shift)
    pose, s = cv.to_cryosparc_pose(angle, shift)
    a2, s2 = cv.from_cryosparc_pose(pose, s, np.full(9, 2.0), np.full(9, 1.0))
    np.testing.assert_allclose(s2, 2 * shift, rtol=1e-6)
    np.testing.assert_array_equal(cv.to_base(cv.from_base(np.array([1, 5]), 1), 0), [0, 4])
    prior = cv.filament_pose_to_psi_prior(np.array([0.3]))
    np.testing.assert_allclose(cv.psi_prior_to_filament_pose(prior), [0.3])
    np.testing.assert_allclose(cv.residual_psi_prior(np.array([40.0]), np.deg2rad([30.0])), [10.0])
