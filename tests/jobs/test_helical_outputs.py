"""The helical outputs of the power-spectrum job on synthetic helices of known symmetry:
stacks and their order, half sets by filament, averages turned like the spectra, the CSV
tables, the axis estimate, the filament mask, and the indexing targets of issue 12."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from csplugin.core.particles import open_particles
from csplugin.engines.filament import (
    filament_axis_angle,
    filament_axis_offset,
    filament_masks,
)
from csplugin.engines.transform import align_images
from csplugin.jobs.helical_indexing import filament_halves
from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra
from csplugin.outputs.helical_report import CANDIDATE_COLUMNS, LINE_COLUMNS
from csplugin.synthetic.helices import (
    HelixSpec,
    class_average_truth,
    make_helical_job,
    make_helical_segments,
)
from formats import InputError

AXES = [30.0, 90.0, 120.0, 10.0, 75.0]  # in-plane axis of each class in the class frame


@pytest.fixture(scope="module")
def helical(tmp_path_factory: pytest.TempPathFactory):
    """The five preset helices (3 short-pitch C1, one C3, one with 1/rise past Nyquist),
    oblique in the class frame, 6 filaments x 12 overlapping segments each, light noise;
    the job run with the defaults (axis vertical, half sets, indexing)."""
    root = tmp_path_factory.mktemp("helical")
    job = make_helical_job(root, axis_angle=AXES, noise_sigma=0.15, seed=1,
                           filaments_per_helix=6, segments_per_filament=12)
    table = open_particles(job.particles_cs)
    out = root / "ps"
    result = power_spectra(table, out, SpectrumOptions())
    summary = json.loads((out / "summary.json").read_text())
    truth = json.loads(job.truth_json.read_text())["classes"]
    return job, table, out, result, summary, truth


def _read(path: Path) -> tuple[np.ndarray, float]:
    with mrcfile.open(path, permissive=False) as mrc:
        return mrc.data.copy(), float(mrc.voxel_size.x)


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_axis_angle_reported_per_class(helical) -> None:
    _, _, _, result, summary, _ = helical
    for k, truth in enumerate(AXES):
        got = summary["axis_angles_deg"][str(k)]
        assert got == pytest.approx(result.axis_angles_deg[k])
        assert abs((got - truth + 90) % 180 - 90) < 1.0, (k, got, truth)
    assert summary["options"]["axis"] == "vertical"  # the new default


def test_stack_order_matches_summary_and_single_files(helical) -> None:
    _, _, out, result, summary, _ = helical
    order = summary["stack_order"]
    assert order == sorted(result.classes) == [0, 1, 2, 3, 4]
    stack, voxel = _read(out / "ps_classes.mrcs")
    assert stack.shape[0] == len(order)
    for i, k in enumerate(order):
        single, single_voxel = _read(out / f"ps_class{k}.mrc")
        assert single_voxel == pytest.approx(voxel)
        np.testing.assert_array_equal(stack[i], single)
    for half in ("ps_classes_half1.mrcs", "ps_classes_half2.mrcs"):
        data, v = _read(out / half)
        assert data.shape == stack.shape and v == pytest.approx(voxel)
    averages, avg_voxel = _read(out / "class_averages.mrcs")
    assert averages.shape == (len(order), 128, 128) and avg_voxel == pytest.approx(2.5)
    # the halves are the spectrum's two parts: their particle-weighted mean is the spectrum
    # (up to the detector-line renormalisation, which is per accumulator)
    h1, h2 = _read(out / "ps_classes_half1.mrcs")[0], _read(out / "ps_classes_half2.mrcs")[0]
    n1 = np.array(summary["half_sets"]["particles"])[:, None, None]
    n2 = np.array(summary["half_sets"]["particles_half2"])[:, None, None]
    mixed = (n1 * h1 + n2 * h2) / (n1 + n2)
    big = stack > np.median(stack)
    assert np.median(np.abs(mixed - stack)[big] / stack[big]) < 0.01
    assert not np.allclose(h1, h2, rtol=0.05)  # and they are different particles


def test_half_sets_never_share_a_filament(helical) -> None:
    job, table, _, _, summary, _ = helical
    halves, how = filament_halves(table)
    assert how.startswith("filament") and summary["half_sets"]["split_by"] == how
    tube = table.particles["helical_tube_id"].to_numpy()
    for f in np.unique(tube):
        assert len(set(halves[tube == f].tolist())) == 1, f"filament {f} in both halves"
    # balanced per class (6 filaments of 12 segments: 36 + 36 at best)
    classes = table.particles["class_index"].to_numpy()
    for k in range(5):
        n1 = int(np.sum((classes == k) & (halves == 0)))
        assert 24 <= n1 <= 48
    assert [a + b for a, b in zip(summary["half_sets"]["particles"],
                                  summary["half_sets"]["particles_half2"])] == [72] * 5


def test_half_sets_without_filament_ids_say_how(helical) -> None:
    _, table, _, _, _, _ = helical
    no_ids = table.with_columns(helical_tube_id=-1)
    halves, how = filament_halves(no_ids)
    if "micrograph" in no_ids.particles:
        assert how.startswith("micrograph")
        mic = no_ids.particles["micrograph"].to_numpy()
        for m in np.unique(mic):
            assert len(set(halves[mic == m].tolist())) == 1
    bare = no_ids.with_columns(helical_tube_id=-1)
    bare = bare.__class__(bare.particles.drop(columns=["micrograph"], errors="ignore"),
                          bare.kind, bare.source, bare.native, bare.optics, bare.aligned)
    halves, how = filament_halves(bare)
    assert how.startswith("input order")
    classes = bare.particles["class_index"].to_numpy()
    for k in range(5):  # first half of each class's particles, then the second
        mine = halves[classes == k]
        assert np.all(np.diff(mine) >= 0) and mine.sum() == len(mine) // 2


def test_averages_are_turned_and_centred_like_the_spectra(helical) -> None:
    """Each written average has its axis vertical and through the centre, and the spectrum
    of the average has its meridional reflection (1/rise) where the class spectrum has it."""
    _, _, out, _, summary, truth = helical
    averages, _ = _read(out / "class_averages.mrcs")
    for i, k in enumerate(summary["stack_order"]):
        avg = averages[i]
        angle = math.degrees(filament_axis_angle(avg))
        assert abs(angle - 90.0) < 1.0, (k, angle)
        assert abs(filament_axis_offset(avg, math.pi / 2)) < 1.0
        rise = truth[str(k)]["rise"]
        spectrum, voxel = _read(out / f"ps_class{k}.mrc")
        m = spectrum.shape[0]
        z = m * voxel / rise  # 1/rise in pixels of the spectrum
        if z > m // 2 - 3:
            continue  # past Nyquist
        padded = np.zeros((m, m))
        n = avg.shape[0]
        padded[:n, :n] = avg - avg.mean()
        own = np.abs(np.fft.fftshift(np.fft.fft2(padded))) ** 2
        c, lo, hi = m // 2, int(z) - 3, int(z) + 4
        for image in (own, spectrum):
            meridian = image[c + lo:c + hi, c - 1:c + 2].sum(axis=1)
            assert abs(lo + int(np.argmax(meridian)) - z) <= 1.0, (k, z)
            # on the meridian, not off it: the reflection is not on the equator's row
            assert image[c + lo:c + hi, c].max() > image[c, c + lo:c + hi].max()


def test_horizontal_axis_and_indexing_switched_off(helical, tmp_path: Path) -> None:
    _, table, _, _, _, _ = helical
    sub = table.select_classes([0, 3])
    power_spectra(sub, tmp_path, SpectrumOptions(axis="horizontal", index=False,
                                                 half_sets=False))
    averages, _ = _read(tmp_path / "class_averages.mrcs")
    for avg in averages:
        angle = math.degrees(filament_axis_angle(avg))
        assert min(angle, 180 - angle) < 1.0
    names, rows = _csv(tmp_path / "helical_candidates.csv")
    assert names == CANDIDATE_COLUMNS and rows == []
    assert not (tmp_path / "ps_classes_half1.mrcs").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stack_order"] == [0, 3]


def test_csv_columns_and_values(helical) -> None:
    _, _, out, _, _, _ = helical
    names, lines = _csv(out / "layer_lines.csv")
    assert names == LINE_COLUMNS == ["class", "height_inv_A", "peak_radius_inv_A", "strength",
                                     "half_agreement", "meridional"]
    assert lines and {r["meridional"] for r in lines} <= {"true", "false"}
    assert all(float(r["height_inv_A"]) >= 0 for r in lines)
    assert all(math.isfinite(float(r["half_agreement"])) for r in lines)  # halves were made
    names, cands = _csv(out / "helical_candidates.csv")
    assert names == CANDIDATE_COLUMNS == ["class", "rank", "rise_A", "twist_deg", "csym",
                                          "pitch_A", "score", "matched_lines", "note"]
    for k in {r["class"] for r in cands}:
        mine = [r for r in cands if r["class"] == k]
        assert [int(r["rank"]) for r in mine] == list(range(1, len(mine) + 1))
        scores = [float(r["score"]) for r in mine]
        assert scores == sorted(scores, reverse=True)
    for r in cands:
        assert -180 < float(r["twist_deg"]) <= 180
        assert float(r["rise_A"]) > 0 and int(r["csym"]) >= 1 and r["note"]


def _rank(rows: list[dict[str, str]], k: int, spec: dict) -> int | None:
    for r in rows:
        if int(r["class"]) != k:
            continue
        if (abs(float(r["rise_A"]) - spec["rise"]) <= 0.02 * spec["rise"]
                and abs(abs(float(r["twist_deg"])) - abs(spec["twist"])) <= 1.5
                and int(r["csym"]) == spec["csym"]):
            return int(r["rank"])
    return None


def test_issue_targets_on_synthetic_helices(helical) -> None:
    """Meridional reflection at 1/rise within 1.5 % inside Nyquist; the true (rise, twist)
    in the top 10 for the short-pitch C1 helices; the rise/pitch ambiguity named where the
    rise reflection is past Nyquist (the Cn rank is only reported)."""
    _, _, out, _, summary, truth = helical
    _, lines = _csv(out / "layer_lines.csv")
    _, cands = _csv(out / "helical_candidates.csv")
    nyquist = 1 / (2 * summary["header_pixel_size_A"])
    ranks = {}
    for key, spec in truth.items():
        k = int(key)
        target = 1 / spec["rise"]
        meridional = [float(r["height_inv_A"]) for r in lines
                      if int(r["class"]) == k and r["meridional"] == "true"]
        if target < nyquist:
            assert any(abs(h - target) <= 0.015 * target for h in meridional), (k, meridional)
        ranks[spec["name"]] = _rank(cands, k, spec)
        if spec["csym"] == 1 and target < nyquist and spec["pitch"] < 320:
            assert ranks[spec["name"]] is not None and ranks[spec["name"]] <= 10, ranks
        if target >= nyquist:
            top = next(r for r in cands if int(r["class"]) == k and r["rank"] == "1")
            assert "rise" in top["note"] and "pitch" in top["note"], top["note"]
    print("ranks of the truth:", ranks)  # c3 reported, not asserted


@pytest.mark.parametrize("radius,sigma,angle", [(15, 3, 17), (50, 3, 133), (50, 3, 0),
                                                (110, 6, 45), (110, 6, 160)])
def test_axis_estimate_thin_wide_oblique_noisy(radius: float, sigma: float, angle: float) -> None:
    helix = HelixSpec("h", 10.0, 33.5, 1, radius, sigma)
    seg = make_helical_segments([helix], filaments_per_helix=4, segments_per_filament=5,
                                axis_angle=angle, noise_sigma=0, seed=2)
    average = class_average_truth(seg)[0]
    noisy = average + np.random.default_rng(3).normal(0, average.std(), average.shape)
    # a filament 70 % of the box wide, at SNR 1 per pixel, is the hard case
    tolerance = 2.0 if radius >= 100 else 1.0
    for image in (average, noisy):
        got = math.degrees(filament_axis_angle(image))
        assert abs((got - angle + 90) % 180 - 90) < tolerance, (radius, angle, got)


def test_filament_mask_is_the_class_frame_rectangle() -> None:
    """Aligning a particle's mask gives the rectangle along the class axis, whatever its pose."""
    box, width = 64, 20.0
    axis = math.radians(35.0)
    rng = np.random.default_rng(0)
    angles, shifts = rng.uniform(0, 2 * np.pi, 4), rng.uniform(-3, 3, (4, 2))
    masks = filament_masks(box, width, angles, shifts, axis, offset=2.0, edge=0.0001)
    aligned = align_images(masks, angles, shifts, "linear")
    y, x = np.mgrid[0:box, 0:box] - box // 2
    across = -math.sin(axis) * x + math.cos(axis) * y - 2.0
    along = math.cos(axis) * x + math.sin(axis) * y
    inside = (np.abs(across) < width / 2 - 1.5) & (np.abs(along) < 0.45 * box - 1.5)
    outside = (np.abs(across) > width / 2 + 1.5) & (np.hypot(x, y) < box / 2 - 8)
    for a in aligned:
        assert a[inside].min() > 0.95 and a[outside].max() < 0.05


def test_filament_mask_job_runs_and_keeps_the_lines(helical, tmp_path: Path) -> None:
    _, table, _, _, _, truth = helical
    sub = table.select_classes([0])
    power_spectra(sub, tmp_path, SpectrumOptions(filament_width=150.0, half_sets=False))
    _, lines = _csv(tmp_path / "layer_lines.csv")
    target = 1 / truth["0"]["rise"]
    assert any(r["meridional"] == "true" and abs(float(r["height_inv_A"]) - target)
               <= 0.015 * target for r in lines)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["options"]["filament_width"] == 150.0


def test_pure_noise_gives_no_agreeing_layer_line(tmp_path: Path) -> None:
    """Segments of pure noise (with filament ids and poses like a real job): whatever peaks
    the detector reports, the two half sets do not agree on them."""
    import dataclasses

    seg = make_helical_segments([HelixSpec("noise", 10.0, 33.5)], filaments_per_helix=8,
                                segments_per_filament=20, noise_sigma=0.0, seed=5)
    noise = np.random.default_rng(6).normal(0, 1, seg.images.shape).astype(np.float32)
    job = make_helical_job(tmp_path, dataclasses.replace(seg, images=noise))
    power_spectra(open_particles(job.particles_cs), tmp_path / "ps",
                  SpectrumOptions(helix_radius=(25.0, 50.0)))
    _, lines = _csv(tmp_path / "ps" / "layer_lines.csv")
    agreement = [float(r["half_agreement"]) for r in lines]
    assert all(a < 0.5 for a in agreement), agreement  # 3 s.d. of noise: 0.375
    # nor along any row of the written half-set spectra (so no threshold could pass one)
    from csplugin.engines.layer_lines import layer_line_agreement

    h1, voxel = _read(tmp_path / "ps" / "ps_classes_half1.mrcs")
    h2, _ = _read(tmp_path / "ps" / "ps_classes_half2.mrcs")
    m = h1.shape[-1]
    heights = np.arange(3, m // 2 - 2) / (m * voxel)
    rows = layer_line_agreement(h1.reshape(-1, m, m)[0], h2.reshape(-1, m, m)[0], voxel,
                                heights)
    assert np.nanmax(rows) < 0.5 and np.nanmean(np.abs(rows)) < 0.15


def test_runner_tasks_give_the_same_half_sets(helical, tmp_path: Path) -> None:
    """The task path (Dask's, run serially here) splits blocks by half set the same way."""
    from csplugin.jobs.runners import SerialRunner

    _, table, _, _, _, _ = helical
    sub = table.select_classes([2])
    power_spectra(sub, tmp_path / "a", SpectrumOptions(index=False))
    power_spectra(sub, tmp_path / "b", SpectrumOptions(index=False), runner=SerialRunner(),
                  block_particles=10)
    for name in ("ps_class2.mrc", "ps_classes_half1.mrcs", "ps_classes_half2.mrcs"):
        a, b = _read(tmp_path / "a" / name)[0], _read(tmp_path / "b" / name)[0]
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max(), name


def test_class_frame_spectra_are_indexed_after_turning(helical, tmp_path: Path) -> None:
    """With --axis class the spectrum stays oblique (axis 30° here); the indexing turns it
    vertical first and still finds the meridional reflection at 1/rise."""
    _, table, _, _, _, truth = helical
    power_spectra(table.select_classes([0]), tmp_path, SpectrumOptions(axis="class",
                                                                       half_sets=False))
    _, lines = _csv(tmp_path / "layer_lines.csv")
    target = 1 / truth["0"]["rise"]
    assert any(r["meridional"] == "true" and abs(float(r["height_inv_A"]) - target)
               <= 0.015 * target for r in lines), lines
    averages, _ = _read(tmp_path / "class_averages.mrcs")  # class frame kept, centred
    angle = math.degrees(filament_axis_angle(averages.reshape(-1, 128, 128)[0]))
    assert abs(angle - AXES[0]) < 1.0


def test_cli_prints_axis_per_class_and_checks_the_mask_options(helical, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from csplugin.app.cli import app

    job, *_ = helical
    run = ["power-spectrum", str(job.particles_cs), "--classes", "3", "--quiet",
           "--no-half-sets", "--helix-radius", "30-65"]
    ok = CliRunner().invoke(app, [*run, "-o", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "class 3: helical axis 10." in ok.output or "class 3: helical axis 9.9" in ok.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["indexing"]["3"]["helix_radius_A"] == [30.0, 65.0]
    bad = CliRunner().invoke(app, [*run, "-o", str(tmp_path / "b"), "--mask-shape", "filament"])
    # refused before any work (the entry point turns InputError into exit status 2)
    assert isinstance(bad.exception, InputError) and "--filament-width" in str(bad.exception)
    assert not (tmp_path / "b").exists()


def _class(k: int, m: int, box: int, average: bool, halves: tuple[bool, bool]):
    from csplugin.jobs.helical_indexing import ClassIndex, ClassOutput

    rng = np.random.default_rng(k)
    plane = lambda: rng.random((m, m)).astype(np.float32)  # noqa: E731
    return ClassOutput(k, plane(), plane() if halves[0] else None,
                       plane() if halves[1] else None,
                       rng.random((box, box)).astype(np.float32) if average else None,
                       ClassIndex(k, None, 0.0, None, None, ""), 1.5, (1, 1), 1)


def test_helical_stacks_are_written_a_class_at_a_time(tmp_path: Path) -> None:
    """Slices in the order added; a missing half is a zero slice; class_averages.mrcs is
    left out when a class has no average; nothing appears when a class is missing."""
    from csplugin.jobs.helical_indexing import HelicalStacks

    options = SpectrumOptions()
    classes = [_class(4, 8, 6, True, (True, True)), _class(9, 8, 6, True, (True, False))]
    with HelicalStacks(tmp_path, 2, 6, 1.2, options) as stacks:
        for c in classes:
            stacks.add(c)
    spectra = mrcfile.read(tmp_path / "ps_classes.mrcs")
    np.testing.assert_array_equal(spectra, np.stack([c.spectrum for c in classes]))
    assert not mrcfile.read(tmp_path / "ps_classes_half2.mrcs")[1].any()
    np.testing.assert_array_equal(mrcfile.read(tmp_path / "class_averages.mrcs")[1],
                                  classes[1].average)
    assert classes[0].slim().spectrum is None and classes[0].slim().result.k == 4

    other = tmp_path / "no_average"
    other.mkdir()
    with HelicalStacks(other, 1, 6, 1.2, options) as stacks:
        stacks.add(_class(1, 8, 6, False, (True, True)))
    assert (other / "ps_classes.mrcs").is_file() and not (other / "class_averages.mrcs").exists()

    short = tmp_path / "short"
    short.mkdir()
    with pytest.raises(RuntimeError, match="1 of 2 classes"):
        with HelicalStacks(short, 2, 6, 1.2, options) as stacks:
            stacks.add(classes[0])
    assert not list(short.iterdir())
