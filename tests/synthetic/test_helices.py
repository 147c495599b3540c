"""Synthetic helical segments: poses consistent with csplugin's convention, a written job
that the readers and the power-spectrum job take end to end."""

from __future__ import annotations

import json

import mrcfile
import numpy as np

from csplugin.core.particles import open_particles
from csplugin.engines.layer_lines import detect_layer_lines
from csplugin.engines.transform import align_images
from csplugin.synthetic.helices import (
    HelixSpec,
    class_frame_positions,
    make_helical_job,
    make_helical_segments,
    preset_helices,
)


def test_aligned_segments_equal_their_class_frame_render() -> None:
    helix = HelixSpec("t", 9.0, 31.7, 2, 25.0, 3.0)
    seg = make_helical_segments([helix], box=64, pixel_size=2.0, filaments_per_helix=2,
                                segments_per_filament=3, noise_sigma=0.0, axis_angle=30.0)
    aligned = align_images(seg.images, seg.angles, seg.shifts, interpolation="cubic")
    grid = np.arange(64) - 32
    for i in range(len(aligned)):
        q = class_frame_positions(helix, 64, 2.0, seg.azimuths[i], seg.axial_positions[i], 30.0)
        gx = np.exp(-0.5 * ((grid[None] - q[:, :1]) / 1.5) ** 2)
        gy = np.exp(-0.5 * ((grid[None] - q[:, 1:]) / 1.5) ** 2)
        expected = gy.T @ gx
        inner = np.s_[12:-12, 12:-12]  # away from the zero fill of the rotation
        assert np.abs(aligned[i][inner] - expected[inner]).max() < 0.02 * expected.max()


def test_segments_step_along_their_filament() -> None:
    seg = make_helical_segments(filaments_per_helix=3, segments_per_filament=5, noise_sigma=0.0,
                                box=32)
    assert seg.images.shape == (5 * 3 * 5, 32, 32) and seg.images.dtype == np.float32
    for f in np.unique(seg.filament_ids):
        rows = seg.filament_ids == f
        helix = seg.helices[seg.classes[rows][0]]
        np.testing.assert_allclose(np.diff(seg.axial_positions[rows]), 3.0 * helix.rise)
        assert np.ptp(seg.azimuths[rows]) == 0 and len(np.unique(seg.classes[rows])) == 1


def test_presets_cover_short_pitch_cn_and_rise_past_nyquist() -> None:
    helices = preset_helices()
    nyquist = 1 / (2 * 2.5)
    c1 = [h for h in helices if h.csym == 1 and 1 / h.rise < nyquist]
    assert len(c1) >= 3 and all(h.pitch < 128 * 2.5 for h in c1)
    assert any(h.csym > 1 for h in helices)
    assert any(1 / h.rise > nyquist for h in helices)


def test_helical_job_reads_back_and_runs_the_power_spectrum_job(tmp_path) -> None:
    from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra

    helices = preset_helices()[:2]
    job = make_helical_job(tmp_path, helices=helices, box=64, filaments_per_helix=4,
                           segments_per_filament=6, noise_sigma=0.2, seed=4)
    seg = job.segments
    for path in (job.particles_cs, job.particles_star):
        table = open_particles(path)
        p = table.particles
        assert len(p) == len(seg.classes)
        assert set(p["class_index"]) == {0, 1}
        np.testing.assert_allclose(np.sort(p["angle"].to_numpy()), np.sort(seg.angles), atol=1e-6)
        tubes = p["helical_tube_id"].to_numpy()
        assert len(np.unique(tubes)) == 8
    truth = json.loads(job.truth_json.read_text())
    assert truth["classes"]["0"]["rise"] == helices[0].rise
    with mrcfile.open(job.class_averages) as mrc:
        assert mrc.data.shape == (2, 64, 64)
    out = tmp_path / "ps"
    table = open_particles(job.particles_cs)
    result = power_spectra(table, out, SpectrumOptions(pad=2, axis="vertical"),
                           class_averages=job.class_averages)
    assert result.classes == {0: 24, 1: 24}
    with mrcfile.open(out / "ps_class0.mrc") as mrc:
        spectrum, voxel = mrc.data.copy(), float(mrc.voxel_size.x)
    assert voxel == np.float32(seg.pixel_size)
    lines = detect_layer_lines(spectrum, voxel)  # axis vertical: the meridian at 1/rise
    assert any(ln.meridional and abs(ln.height * helices[0].rise - 1) < 0.02 for ln in lines)
