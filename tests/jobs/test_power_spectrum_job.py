"""The power-spectrum job end to end: outputs, orientation, pooling, headers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from csplugin.core.particles import open_particles
from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra


def _read(path: Path) -> tuple[np.ndarray, float]:
    with mrcfile.open(path) as mrc:
        return mrc.data.copy(), float(mrc.voxel_size.x)


def test_outputs_headers_and_pooling(job, tmp_path: Path) -> None:
    table = open_particles(job.particles_cs)
    # line suppression renormalises per accumulator, so pooling is exactly linear without it
    result = power_spectra(table, tmp_path, SpectrumOptions(pad=2, suppress_detector_lines=False,
                                                            axis="class"))
    assert result.classes == {0: 40, 1: 40, 2: 40}
    spectra = {k: _read(tmp_path / f"ps_class{k}.mrc")[0] for k in range(3)}
    pooled, voxel = _read(tmp_path / "ps_all.mrc")
    assert pooled.shape == (2 * job.box, 2 * job.box) and voxel == pytest.approx(job.pixel_size)
    # pooled = particle-weighted mean of the class spectra (axis "class": no extra rotation)
    np.testing.assert_allclose(pooled, sum(spectra.values()) / 3, rtol=2e-3,
                               atol=1e-3 * pooled.max())
    centre = job.box  # M // 2 with M = 2 * box
    inner = pooled[1:, 1:]  # Friedel symmetry about the zero frequency at (M//2, M//2)
    np.testing.assert_allclose(inner, inner[::-1, ::-1], rtol=1e-3, atol=1e-4 * pooled.max())
    assert centre == pooled.shape[0] // 2
    for name in ("ps_all.png", "ps_class0_profiles.csv", "ps_class0.png",
                 "ps_camera_frame.mrc", "summary.json"):
        assert (tmp_path / name).is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["classes"] == {"0": 40, "1": 40, "2": 40} and summary["box"] == job.box
    csv = np.loadtxt(tmp_path / "ps_class0_profiles.csv", delimiter=",", skiprows=1)
    assert csv[-1, 0] == pytest.approx(1 / (2 * job.pixel_size), rel=1e-6)  # edge = Nyquist


@pytest.mark.parametrize("axis", ["vertical", "horizontal"])
def test_helical_axis_orientation_puts_the_meridian_where_asked(job, tmp_path: Path,
                                                                axis: str) -> None:
    """Class 0 is a helix along x with subunit rise box/16 px: its meridional reflection sits
    at 1/rise on the meridian, which must be the column (vertical) or the row (horizontal)."""
    table = open_particles(job.particles_cs).select_classes([0])
    result = power_spectra(table, tmp_path, SpectrumOptions(pad=2, axis=axis))  # type: ignore[arg-type]
    assert abs(((result.axis_angles_deg[0] + 90) % 180) - 90) < 2.0  # the helix lies along x
    spectrum, _ = _read(tmp_path / "ps_class0.mrc")
    m, c = spectrum.shape[0], spectrum.shape[0] // 2
    k = round(m / (job.box / 16))  # 1/rise in pixels of the M-sized spectrum
    column, row = spectrum[c:, c], spectrum[c, c:]
    meridian, other = (column, row) if axis == "vertical" else (row, column)
    assert meridian[k] > 10 * meridian[k + 4]  # a sharp reflection at 1/rise
    assert meridian[k] > 3 * other[k]  # on the meridian, not the equator


def test_crop_and_log_and_given_axis(job, tmp_path: Path) -> None:
    table = open_particles(job.particles_star).select_classes([1])
    result = power_spectra(table, tmp_path, SpectrumOptions(pad=1, crop_resolution=8.0, log=True,
                                                            axis="vertical"),
                           axis_angles={1: 0.0})
    assert result.axis_angles_deg == {1: 0.0}
    spectrum, voxel = _read(tmp_path / "ps_class1.mrc")
    assert voxel == pytest.approx(4.0, rel=0.05)  # resolution / 2 at the edge
    assert spectrum.shape[0] < job.box and spectrum.min() >= 0


def test_cli_errors(job, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "csplugin", "power-spectrum", str(job.particles_cs), "-o",
           str(tmp_path / "o"), "--quiet"]
    bad_axis = subprocess.run([*run, "--axis", "diagonal"], capture_output=True, text=True)
    assert bad_axis.returncode == 2 and "--axis" in bad_axis.stderr
    fine = subprocess.run([*run, "--crop-resolution", "1.0"], capture_output=True, text=True)
    assert fine.returncode == 2 and "Nyquist" in fine.stderr and "Traceback" not in fine.stderr
    ok = subprocess.run([*run, "--classes", "2", "--pad", "1"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "o").glob("*.mrc")) == [
        "ps_all.mrc", "ps_camera_frame.mrc", "ps_class2.mrc"]


def test_pooled_equals_one_accumulator_of_all_particles(job, tmp_path: Path) -> None:
    """Pooling rotated class sums is exact, line suppression included."""
    from csplugin.core.images import iter_chunks
    from csplugin.engines.power_spectrum import PowerSpectrumAccumulator

    table = open_particles(job.particles_cs)
    step = np.deg2rad(0.5)  # angles on the bin grid, so binning itself is exact
    table = table.with_columns(angle=np.round(table.particles["angle"] / step) * step)
    power_spectra(table, tmp_path, SpectrumOptions(pad=2, axis="class"),
                  memory_budget=1)  # one class a pass
    pooled, _ = _read(tmp_path / "ps_all.mrc")
    single = PowerSpectrumAccumulator(job.box, pad=2)
    for rows, images in iter_chunks(table):
        single.add(images, table.particles["angle"].to_numpy()[rows])
    np.testing.assert_allclose(pooled, single.result(), rtol=1e-4, atol=1e-6 * pooled.max())


def test_cs_and_star_inputs_give_the_same_spectra(job, tmp_path: Path) -> None:
    a = power_spectra(open_particles(job.particles_cs), tmp_path / "a", SpectrumOptions(pad=1))
    b = power_spectra(open_particles(job.particles_star), tmp_path / "b", SpectrumOptions(pad=1))
    assert a.classes == {0: 40, 1: 40, 2: 40} and b.classes == {1: 40, 2: 40, 3: 40}
    for k in range(3):
        np.testing.assert_allclose(_read(tmp_path / "a" / f"ps_class{k}.mrc")[0],
                                   _read(tmp_path / "b" / f"ps_class{k + 1}.mrc")[0], rtol=1e-4,
                                   atol=1e-5)
