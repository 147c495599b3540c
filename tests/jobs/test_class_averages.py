"""class-averages: averages vs the truth, slice order, outputs, stackers, weights, CTF, CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from csplugin.averaging.engine import FALLBACK_SNR, estimate_snr
from csplugin.core.images import check_stacks, read_chunk
from csplugin.core.particles import ParticleTable, open_particles
from csplugin.engines.correlation import disc_correlation as correlation
from csplugin.engines.ctf import CTFParams, WienerAccumulator, ctf_2d
from csplugin.engines.stackers import MedianImageStacker
from csplugin.engines.transform import align_images
from csplugin.jobs.class_averages import class_averages
from csplugin.synthetic import SyntheticJob, make_job
from formats import InputError
from formats.cs import read_cs
from formats.mrc import open_stack, write_stack
from formats.star import read_star, split_image_names

MANIFEST = ".csplugin-result.json"  # what each csplugin job wrote (outputs.directory)
OUTPUTS = {"class_averages.mrcs", "class_averages.cs", "class_averages.star",
           "class_averages.png"}


def _disc(n: int, margin: int = 6) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - n // 2
    return x**2 + y**2 < (n // 2 - margin) ** 2


def _relative_error(average: np.ndarray, truth: np.ndarray) -> float:
    """Squared error inside the disc (away from the zero-filled corners) / truth power."""
    disc = _disc(truth.shape[-1])
    return float(((average - truth)[disc] ** 2).sum() / (truth[disc] ** 2).sum())


def _truth(job: SyntheticJob) -> np.ndarray:
    return open_stack(job.class_images).read(range(3))


def _rewrite(table: ParticleTable, path: Path,
             change: Callable[[np.ndarray], np.ndarray]) -> ParticleTable:
    """The table with its raw images, in table order, replaced by ``change(images)`` in one
    new stack ``path``."""
    images = read_chunk(table, np.arange(len(table)), check_stacks(table))
    write_stack(path, change(images.astype(np.float64)).astype(np.float32), table.pixel_size())
    return table.with_columns(stack=str(path), stack_index=np.arange(len(table)))


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csplugin", "class-averages", *map(str, args)],
                          capture_output=True, text=True)


# ------------------------------------------------------------------------- geometry & layout
@pytest.mark.parametrize("source", ["particles_cs", "particles_star"])
def test_mean_equals_the_truth_for_cs_and_star(job, tmp_path: Path, source: str) -> None:
    result = class_averages(open_particles(getattr(job, source)), tmp_path)
    truth = _truth(job)
    assert result.averages.shape == (3, job.box, job.box)
    for k in range(3):
        assert _relative_error(result.averages[k], truth[k]) < 1e-4
    np.testing.assert_array_equal(result.counts, np.bincount(job.classes))
    assert {p.name for p in tmp_path.iterdir()} - {MANIFEST} == OUTPUTS


def test_subset_slices_ascend_and_metadata_use_each_numbering(job, tmp_path: Path) -> None:
    truth = _truth(job)
    star_table = open_particles(job.particles_star).select_classes([3, 1])  # RELION 1-based
    result = class_averages(star_table, tmp_path / "star")
    np.testing.assert_array_equal(result.classes, [1, 3])
    written = open_stack(result.mrcs).read(range(2))
    assert open_stack(result.mrcs).voxel_size == pytest.approx(job.pixel_size)
    for slice_, k in ((0, 0), (1, 2)):
        assert _relative_error(written[slice_], truth[k]) < 1e-4

    model = read_star(result.star)["model_classes"]
    np.testing.assert_array_equal(model["rlnClassNumber"], [1, 3])
    numbers, stacks = split_image_names(model["rlnReferenceImage"])
    np.testing.assert_array_equal(numbers, [1, 2])
    assert all(Path(s).name == "class_averages.mrcs" for s in stacks)
    counts = np.bincount(job.classes)[[0, 2]]
    np.testing.assert_array_equal(model["rlnClassParticleCount"], counts)
    np.testing.assert_allclose(model["rlnClassDistribution"], counts / counts.sum())

    cs = read_cs(result.cs)
    np.testing.assert_array_equal(cs["alignments2D/class"], [0, 2])  # cryoSPARC 0-based
    np.testing.assert_array_equal(cs["blob/idx"], [0, 1])
    np.testing.assert_array_equal(cs["alignments2D/num_particles"], counts)
    assert set(cs["blob/path"]) == {b"class_averages.mrcs"}
    np.testing.assert_array_equal(cs["blob/shape"], [[job.box, job.box]] * 2)
    np.testing.assert_allclose(cs["blob/psize_A"], job.pixel_size)

    cs_result = class_averages(open_particles(job.particles_cs).select_classes([2, 0]),
                               tmp_path / "cs")
    np.testing.assert_array_equal(cs_result.classes, [0, 2])
    np.testing.assert_allclose(cs_result.averages, result.averages, atol=1e-5)
    np.testing.assert_array_equal(read_star(cs_result.star)["model_classes"]["rlnClassNumber"],
                                  [1, 3])
    np.testing.assert_array_equal(read_cs(cs_result.cs)["alignments2D/class"], [0, 2])


def test_compare_with_the_true_class_images(job, tmp_path: Path) -> None:
    result = class_averages(open_particles(job.particles_star), tmp_path,
                            compare=job.class_images)
    assert list(result.comparison["class"]) == [1, 2, 3]
    assert list(result.comparison["slice"]) == [0, 1, 2]
    assert (result.comparison["correlation"] > 0.997).all()
    assert (tmp_path / "compare.csv").read_text().splitlines()[0] == \
        "class,slice,particles,correlation"
    shuffled = tmp_path / "shuffled.mrcs"
    write_stack(shuffled, _truth(job)[[1, 2, 0]], job.pixel_size)
    wrong = class_averages(open_particles(job.particles_star), tmp_path / "w", compare=shuffled)
    assert (wrong.comparison["correlation"] < 0.5).all()


def test_refuses_existing_outputs_and_bad_input_writes_nothing(job, tmp_path: Path) -> None:
    table = open_particles(job.particles_cs)
    class_averages(table, tmp_path / "a")
    with pytest.raises(InputError, match="already exists"):
        class_averages(table, tmp_path / "a")
    class_averages(table, tmp_path / "a", overwrite=True)
    with pytest.raises(InputError, match="no particles in class 7"):
        table.select_classes([0, 7])
    bad = tmp_path / "bad"
    with pytest.raises(InputError, match="mixes pixel sizes"):
        sizes = np.where(np.arange(len(table)) % 2, 1.5, 2.0)
        class_averages(table.with_columns(pixel_size=sizes), bad)
    with pytest.raises(InputError, match="no class posterior.*rlnMaxValueProbDistribution"):
        class_averages(open_particles(job.particles_star), bad, weights="posterior")
    with pytest.raises(InputError, match="no CTF parameter 'defocus_u'"):
        class_averages(table.with_columns(defocus_u=np.nan), bad, ctf="wiener")
    with pytest.raises(InputError, match="cannot use --stacker median"):
        class_averages(table, bad, ctf="wiener", stacker="median")
    small = tmp_path / "small.mrcs"
    write_stack(small, np.zeros((3, 32, 32), np.float32), job.pixel_size)
    with pytest.raises(InputError, match="holds"):
        class_averages(table, bad, compare=small)
    assert not bad.exists() or not any(bad.iterdir())


# ---------------------------------------------------------------------------------- stackers
@pytest.fixture(scope="module")
def outlier_job(tmp_path_factory: pytest.TempPathFactory) -> SyntheticJob:
    return make_job(tmp_path_factory.mktemp("outliers"), n_per_class=40, box=64,
                    noise_sigma=0.2, seed=3)


def _with_junk(table: ParticleTable, path: Path, junk: np.ndarray) -> ParticleTable:
    """Replace the particles at ``junk`` (bool, table order) by bright squares."""
    def change(images: np.ndarray) -> np.ndarray:
        images[junk] = 0.0
        images[junk, 20:40, 10:30] = 25.0
        return images
    return _rewrite(table, path, change)


@pytest.mark.parametrize("stacker", ["median", "sigma-rejection", "winsorized"])
def test_robust_stackers_equal_mean_without_noise_and_beat_it_on_junk(
        job, outlier_job, tmp_path: Path, stacker: str) -> None:
    table = open_particles(job.particles_cs)
    mean = class_averages(table, tmp_path / "mean").averages
    robust = class_averages(table, tmp_path / "robust", stacker=stacker).averages
    disc = _disc(job.box)
    np.testing.assert_allclose(robust[:, disc], mean[:, disc], atol=2e-3)

    noisy = open_particles(outlier_job.particles_cs)
    classes = noisy.particles["class_index"].to_numpy()
    junk = (classes == 1) & (np.cumsum(classes == 1) <= 3)  # 3 of class 1's 40 particles
    dirty = _with_junk(noisy, tmp_path / "junk.mrcs", junk)
    truth = _truth(outlier_job)[1]
    mean_error = _relative_error(class_averages(dirty, tmp_path / "m").averages[1], truth)
    robust_error = _relative_error(
        class_averages(dirty, tmp_path / "r", stacker=stacker).averages[1], truth)
    assert mean_error > 0.5
    assert robust_error < mean_error / 10


def test_tiled_spill_equals_the_in_memory_stacker(outlier_job, tmp_path: Path) -> None:
    table = open_particles(outlier_job.particles_star).select_classes([2])
    images = read_chunk(table, np.arange(len(table)), check_stacks(table))
    p = table.particles
    aligned = align_images(images, p["angle"], p[["shift_x", "shift_y"]].to_numpy())
    expected = MedianImageStacker()(aligned)
    calls: list[int] = []
    tiled = class_averages(table, tmp_path, stacker="median", tile_bytes=4 * len(table) * 1500,
                           chunk_size=7, progress=calls.append)  # tiles of 1500, 1500, 1096 px
    np.testing.assert_allclose(tiled.averages[0], expected, atol=1e-6)
    assert sum(calls) == len(table) and max(calls) == 7
    assert {p.name for p in tmp_path.iterdir()} - {MANIFEST} == OUTPUTS  # no spill file


def test_posterior_weights_suppress_low_posterior_junk(outlier_job, tmp_path: Path) -> None:
    table = open_particles(outlier_job.particles_cs)
    classes = table.particles["class_index"].to_numpy()
    junk = (classes == 2) & (np.arange(len(table)) % 4 == 0)
    posterior = np.where(junk, 0.001, 0.95)
    dirty = _with_junk(table, tmp_path / "junk.mrcs", junk).with_columns(
        class_posterior=posterior)
    truth = _truth(outlier_job)[2]
    plain = _relative_error(class_averages(dirty, tmp_path / "a").averages[2], truth)
    weighted = _relative_error(class_averages(dirty, tmp_path / "b", weights="posterior"
                                              ).averages[2], truth)
    assert plain > 1 and weighted < plain / 100


# --------------------------------------------------------------------------------------- CTF
@pytest.fixture(scope="module")
def ctf_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[ParticleTable, np.ndarray,
                                                                 ParticleTable]:
    """Particles with a strongly astigmatic CTF applied in the raw frame (+ slight noise).

    Returns the table, the true class images and the same particles as a table whose
    astigmatism angles make the (correct) code render the CTF with the *wrong* sign of the
    rotation into the aligned frame: φ' = φ - 2θ, so φ' + θ = φ - θ.
    """
    root = tmp_path_factory.mktemp("ctf")
    job = make_job(root, n_per_class=40, box=64, noise_sigma=0.0, seed=5)
    table = open_particles(job.particles_cs)
    rng = np.random.default_rng(7)
    n = len(table)
    du = rng.uniform(6000, 12000, n)
    dv = du - rng.uniform(2000, 4000, n)
    phi = rng.uniform(0, 180, n)
    table = table.with_columns(defocus_u=du, defocus_v=dv, defocus_angle=phi)

    def modulate(images: np.ndarray) -> np.ndarray:
        ctfs = ctf_2d(job.box, job.pixel_size, CTFParams(du, dv, phi, 300.0, 2.7, 0.1), rfft=True)
        raw = np.fft.irfft2(np.fft.rfft2(images) * ctfs, s=(job.box, job.box))
        return raw + rng.normal(0, 0.05, raw.shape)

    table = _rewrite(table, root / "ctf.mrcs", modulate)
    wrong = table.with_columns(defocus_angle=phi - 2 * np.rad2deg(table.particles["angle"]))
    return table, _truth(job), wrong


def _correlations(table: ParticleTable, truth: np.ndarray, outdir: Path, **options: object
                  ) -> np.ndarray:
    averages = class_averages(table, outdir, **options).averages
    return np.array([correlation(a, t) for a, t in zip(averages, truth)])


def test_wiener_restores_the_class_images_and_needs_the_right_rotation(
        ctf_data, tmp_path: Path) -> None:
    table, truth, wrong = ctf_data
    plain = _correlations(table, truth, tmp_path / "mean")
    flipped = _correlations(table, truth, tmp_path / "flip", ctf="phase-flip")
    wiener = _correlations(table, truth, tmp_path / "wiener", ctf="wiener")
    misrotated = _correlations(wrong, truth, tmp_path / "wrong", ctf="wiener")
    assert (plain < 0.85).all()                    # measured 0.66 / 0.82 / 0.83
    assert (flipped > plain + 0.03).all()          # 0.88 / 0.90 / 0.87
    assert (wiener > 0.99).all()                   # 0.993 / 0.997 / 0.998
    assert ((1 - misrotated) > 2 * (1 - wiener)).all()  # error x6.5 / x3.8 / x2.7
    flipped_wrong = _correlations(wrong, truth, tmp_path / "flip-wrong", ctf="phase-flip")
    assert flipped_wrong.mean() < flipped.mean() - 0.01


def test_wiener_snr_given_estimated_and_reported(ctf_data, tmp_path: Path) -> None:
    table, truth, _ = ctf_data
    estimated = class_averages(table, tmp_path / "e", ctf="wiener")
    assert estimated.snr is not None and (estimated.snr > 1).all()  # nearly noise-free data
    given = class_averages(table, tmp_path / "g", ctf="wiener", wiener_snr=0.01)
    np.testing.assert_array_equal(given.snr, 0.01)
    heavy = [correlation(a, t) for a, t in zip(given.averages, truth)]
    light = [correlation(a, t) for a, t in zip(estimated.averages, truth)]
    assert np.all(np.array(heavy) < np.array(light) - 0.1)  # over-regularised


def test_premultiplied_particles(ctf_data, tmp_path: Path) -> None:
    """Premultiplied data carry CTF² (≥ 0): Wiener uses them as its numerator, phase-flip
    leaves them as they are."""
    table, truth, _ = ctf_data
    ctfs = ctf_2d(table.box(), table.pixel_size(),
                  CTFParams(*(table.particles[c].to_numpy() for c in (
        "defocus_u", "defocus_v", "defocus_angle")), 300.0, 2.7, 0.1), rfft=True)
    n = table.box()
    premultiplied = _rewrite(
        table, tmp_path / "premultiplied.mrcs",
        lambda images: np.fft.irfft2(np.fft.rfft2(images) * ctfs, s=(n, n)),
    ).with_columns(ctf_premultiplied=True)
    wiener = _correlations(premultiplied, truth, tmp_path / "w", ctf="wiener")
    assert (wiener > 0.97).all()
    flipped = class_averages(premultiplied, tmp_path / "f", ctf="phase-flip").averages
    plain = class_averages(premultiplied, tmp_path / "p").averages
    np.testing.assert_allclose(flipped, plain, atol=1e-6)


def test_snr_estimate_recovers_a_known_snr() -> None:
    """White signal of variance s² in white noise of variance 1, CTF = 1: SNR = s²."""
    rng = np.random.default_rng(0)
    box = 64
    for snr, n in ((0.25, 400), (0.05, 1000), (1.0, 60)):
        signal = rng.normal(0, np.sqrt(snr), (box, box))
        halves = (WienerAccumulator(box), WienerAccumulator(box))
        for half in halves:
            half.add(signal + rng.normal(0, 1, (n // 2, box, box)),
                     np.ones((n // 2, box, box // 2 + 1)))
        assert estimate_snr(*halves) == pytest.approx(snr, rel=0.2)
    empty = (WienerAccumulator(box), WienerAccumulator(box))
    empty[0].add(rng.normal(0, 1, (1, box, box)), np.ones((1, box, box // 2 + 1)))
    assert estimate_snr(*empty) == FALLBACK_SNR


# --------------------------------------------------------------------------------------- CLI
def test_cli_writes_outputs_and_prints_the_comparison(job, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _run(job.particles_cs, "-o", out, "--classes", "0,2", "--stacker", "median",
                "--compare", job.class_images, "-q")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} - {MANIFEST} == OUTPUTS | {"compare.csv"}
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["class", "particles", "correlation"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "2"]
    assert all(float(line.split()[2]) > 0.99 for line in lines[1:])
    assert "wrote 2 class averages" in done.stderr


@pytest.mark.parametrize("case", ["unknown-class", "wiener-without-ctf"])
def test_cli_bad_input_exits_2_with_one_line_and_no_outputs(job, tmp_path: Path,
                                                            case: str) -> None:
    out = tmp_path / "out"
    if case == "unknown-class":
        done = _run(job.particles_star, "-o", out, "--classes", "9")
    else:  # a .cs without its passthrough has no CTF
        lonely = tmp_path / "J9" / "J9_020_particles.cs"
        lonely.parent.mkdir()
        shutil.copy(job.particles_cs, lonely)
        done = _run(lonely, "-o", out, "--project-dir", job.project, "--ctf", "wiener")
    assert done.returncode == 2
    # one message line (cli._progress currently prints a blank line when a job fails
    # before its first chunk: rich's Progress.stop() on a bar that never started)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "Traceback" not in done.stderr
    assert not out.exists() or not any(out.iterdir())
