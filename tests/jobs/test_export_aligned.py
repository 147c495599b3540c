"""export-aligned: geometry, metadata written back, RELION as an oracle, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from csplugin.core.particles import open_particles
from csplugin.jobs.export_aligned import export_aligned
from csplugin.synthetic import class_models, render
from formats.cs import read_cs, write_cs
from formats.mrc import open_stack
from formats.star import read_star, write_star


def _stack(result) -> np.ndarray:
    return np.concatenate([open_stack(s).read(range(open_stack(s).n)) for s in result.stacks])


def _disc(n: int, margin: int) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - n // 2
    return x**2 + y**2 < (n // 2 - margin) ** 2


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csplugin", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_cs_and_star_inputs_give_the_same_aligned_stack(job, tmp_path: Path) -> None:
    a = export_aligned(open_particles(job.particles_cs), tmp_path / "a")
    b = export_aligned(open_particles(job.particles_star), tmp_path / "b")
    np.testing.assert_allclose(_stack(a), _stack(b), atol=1e-5)
    truth = np.concatenate([render(m, job.box) for m in class_models(job.box)])[job.classes]
    disc = _disc(job.box, 6)
    error = (_stack(a) - truth)[:, disc]
    assert (error**2).sum() / (truth[:, disc] ** 2).sum() < 1e-5


def test_written_metadata_consumes_alignment_and_keeps_the_rest(job, tmp_path: Path) -> None:
    result = export_aligned(open_particles(job.particles_cs), tmp_path / "out",
                            particles_per_stack=50, float16=True)
    assert [s.name for s in result.stacks] == [f"particles_aligned_{k:04d}.mrcs" for k in range(3)]
    with mrcfile.open(result.stacks[0]) as mrc:
        assert mrc.data.dtype == np.float16 and mrc.is_image_stack()
        assert mrc.voxel_size.x == pytest.approx(job.pixel_size)
    original = read_cs(job.particles_cs)
    cs = read_cs(result.cs)
    assert np.all(cs["alignments2D/pose"] == 0) and np.all(cs["alignments2D/shift"] == 0)
    for field in ("uid", "alignments2D/class", "alignments2D/class_posterior", "blob/sign"):
        np.testing.assert_array_equal(cs[field], original[field])
    assert "ctf/df1_A" in cs.dtype.names and "location/micrograph_path" in cs.dtype.names
    assert cs["blob/path"][0] == b"particles_aligned_0000.mrcs"
    assert cs["blob/idx"][50] == 0 and cs["blob/path"][50] == b"particles_aligned_0001.mrcs"
    star = read_star(result.star)
    assert (star["particles"]["rlnAnglePsi"] == 0).all()
    assert (star["particles"]["rlnOriginXAngst"] == 0).all()
    np.testing.assert_array_equal(star["particles"]["rlnClassNumber"], job.classes + 1)
    assert star["particles"]["rlnImageName"].iloc[50].startswith("000001@")
    for path in (result.star, result.cs):  # both point at stacks that exist
        reread = open_particles(path)
        assert reread.missing_stacks() == []
        assert len(reread) == len(job.classes)


def test_class_selection_uses_the_inputs_numbering(job, tmp_path: Path) -> None:
    from_cs = export_aligned(open_particles(job.particles_cs).select_classes([0, 2]),
                             tmp_path / "c")
    from_star = export_aligned(open_particles(job.particles_star).select_classes([1, 3]),
                               tmp_path / "s")
    np.testing.assert_allclose(_stack(from_cs), _stack(from_star), atol=1e-6)
    assert from_cs.particles == int(np.isin(job.classes, [0, 2]).sum())


def test_result_does_not_depend_on_chunk_size(job, tmp_path: Path) -> None:
    table = open_particles(job.particles_cs)
    a = export_aligned(table, tmp_path / "a", chunk_size=7, particles_per_stack=50)
    b = export_aligned(table, tmp_path / "b", chunk_size=256)
    assert len(a.stacks) == 3 and len(b.stacks) == 1  # chunks of 7 never straddle stacks of 50
    np.testing.assert_array_equal(_stack(a), _stack(b))


@pytest.mark.relion
def test_linear_matches_relion_stack_create(job, tmp_path: Path) -> None:
    subprocess.run(["relion_stack_create", "--i", str(job.particles_star), "--o",
                    str(tmp_path / "relion"), "--apply_transformation", "--one_by_one"],
                   cwd=job.project, check=True, capture_output=True)
    with mrcfile.open(tmp_path / "relion.mrcs") as mrc:
        relion = mrc.data.copy()
    ours = _stack(export_aligned(open_particles(job.particles_star), tmp_path / "ours",
                                 interpolation="linear"))
    disc = _disc(job.box, 6)
    scale = np.abs(relion).max()
    assert np.abs(ours - relion)[:, disc].max() < 1e-5 * scale
    cubic = _stack(export_aligned(open_particles(job.particles_star), tmp_path / "cubic"))
    assert np.abs(cubic - relion)[:, disc].max() > 1e-4 * scale  # a different interpolator


def test_cli_export_and_refusal_to_overwrite(job, tmp_path: Path) -> None:
    done = _run("export-aligned", str(job.particles_cs), "-o", str(tmp_path / "o"), "--quiet",
                "--classes", "1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "particles.star").is_file()
    again = _run("export-aligned", str(job.particles_cs), "-o", str(tmp_path / "o"), "--quiet")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr


def _assert_user_error(done: subprocess.CompletedProcess, text: str, outdir: Path) -> None:
    assert done.returncode == 2, done.stderr
    assert text in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # one message (soft-wrapped at most once)
    assert not outdir.exists() or not any(outdir.iterdir())


def test_bad_input_exits_2_with_one_line_and_no_outputs(job, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _assert_user_error(_run("export-aligned", str(job.particles_cs), "-o", str(out),
                            "--classes", "9"), "selects no particles", out)
    data = read_cs(job.particles_cs)
    data["blob/idx"][5] = 10_000
    past_end = job.particles_cs.parent / "J3_999_particles.cs"
    write_cs(past_end, data)
    done = _run("export-aligned", str(past_end), "-o", str(out))
    _assert_user_error(done, "refers to image 10000", out)
    data = read_cs(job.particles_cs)
    data["blob/path"][0] = b"J2/extract/nothere.mrc"
    missing = job.particles_cs.parent / "J3_998_particles.cs"
    write_cs(missing, data)
    _assert_user_error(_run("export-aligned", str(missing), "-o", str(out)), "not found", out)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")  # an output path below a regular file cannot be created
    done = _run("export-aligned", str(job.particles_cs), "-o", str(not_a_dir / "sub"))
    assert done.returncode == 2 and "cannot be written" in done.stderr


def test_nan_pixels_are_a_user_error(job, tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "J2" / "extract").mkdir(parents=True)
    (project / "J3").mkdir()
    table = open_particles(job.particles_cs)
    first = table.particles["stack"].iloc[0]
    images = open_stack(first).read(range(open_stack(first).n))
    images[3, 5, 5] = np.nan
    name = Path(first).name
    with pytest.warns(RuntimeWarning, match="NaN"):
        mrcfile.write(project / "J2" / "extract" / name, images, voxel_size=job.pixel_size)
    for other in table.particles["stack"].unique()[1:]:
        (project / "J2" / "extract" / Path(other).name).symlink_to(other)
    write_cs(project / "J3" / "J3_020_particles.cs", read_cs(job.particles_cs))
    write_cs(project / "J3" / "J3_passthrough_particles.cs", read_cs(job.passthrough_cs))
    out = tmp_path / "out"
    done = _run("export-aligned", str(project / "J3" / "J3_020_particles.cs"), "-o", str(out))
    _assert_user_error(done, "NaN", out)


def test_star_with_absolute_paths_and_convert_cli(job, tmp_path: Path) -> None:
    blocks = read_star(job.particles_star)
    blocks["particles"]["rlnImageName"] = [
        f"{name.split('@')[0]}@{job.project / name.split('@')[1]}"
        for name in blocks["particles"]["rlnImageName"]]
    write_star(tmp_path / "abs.star", blocks)
    done = _run("convert", str(tmp_path / "abs.star"), "-o", str(tmp_path / "abs.cs"))
    assert done.returncode == 0, done.stderr
    table = open_particles(tmp_path / "abs.cs")
    assert table.missing_stacks() == []
    np.testing.assert_allclose(table.particles["angle"], job.angles, atol=1e-6)
    info = _run("info", str(tmp_path / "abs.cs"))
    assert "0: 40, 1: 40, 2: 40" in info.stdout


def test_particles_without_2d_alignments_are_refused(real: Path, tmp_path: Path) -> None:
    """A 3D-refinement .cs has no alignments2D: exporting it would silently apply nothing."""
    done = _run("export-aligned", str(real / "cryodrgn/cryosparc_P12_J24_001_particles.cs"),
                "-o", str(tmp_path / "o"))
    _assert_user_error(done, "no alignments2D", tmp_path / "o")
    for name in ("power-spectrum", "class-averages"):
        done = _run(name, str(real / "cryodrgn/empiar_10076_7.cs"), "-o", str(tmp_path / name))
        _assert_user_error(done, "pass the particles of a 2D classification job", tmp_path / name)


def test_an_unknown_class_in_the_selection_is_refused_not_dropped(job, tmp_path: Path) -> None:
    """--classes 0,9 (no class 9): every command refuses rather than exporting class 0 alone."""
    for name in ("export-aligned", "power-spectrum"):
        done = _run(name, str(job.particles_cs), "-o", str(tmp_path / name), "--classes", "0,9")
        _assert_user_error(done, "selects no particles in class 9 (classes present: 0,1,2)",
                           tmp_path / name)
