"""The native codec (``.cs``/``.star`` writers) on real files: nothing invented, nothing
dropped, and every written ``.star`` readable by RELION 3.1.

Variants of real files (a field removed, classes set to 0, ...) are made in ``tmp_path``
from the files in ``fixtures/real`` (sources and licences in its README).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from numpy.lib import recfunctions as rfn

from csplugin.core.native import notes, save_particles, to_cs, to_star
from csplugin.core.particles import open_particles
from csplugin.jobs.info import describe
from formats import InputError
from formats.cs import read_cs, write_cs

J2 = "cryodrgn/cryosparc_J2_particles_exported.cs"  # 2D classification, CTF merged
REFINE = "cryodrgn/cryosparc_P12_J24_001_particles.cs"  # 3D refinement
IMPORT = "cryodrgn/empiar_10076_7.cs"  # imported particles: no alignments
R31 = "cryodrgn/relion31.star"  # RELION 3.1 refinement, stack present
R30 = "cryodrgn/empiar_10076_7.star"  # RELION 3.0, no box in the file, stack present
GROUPS6 = "cryodrgn/relion31.6opticsgroups.star"  # 6 optics groups

ALIGNMENT_LABELS = {"rlnAnglePsi", "rlnAngleRot", "rlnAngleTilt", "rlnOriginX", "rlnOriginY",
                    "rlnOriginXAngst", "rlnOriginYAngst"}


def _drop_fields(data: np.ndarray, prefix: str) -> np.ndarray:
    return rfn.drop_fields(data, [n for n in data.dtype.names if n.startswith(prefix)],
                           usemask=False)


def _write_star_variant(source: Path, target: Path, change) -> Path:  # noqa: ANN001
    blocks = starfile.read(source, always_dict=True)
    change(blocks)
    starfile.write(blocks, target)
    return target


def assert_relion_reads(star: Path, cwd: Path, images: bool = False) -> None:
    """relion_star_handler reads the file with its optics table and no error; with
    ``images``, relion_image_handler reads every particle image through it."""
    done = subprocess.run(["relion_star_handler", "--i", str(star.absolute()), "--o",
                           str(star.absolute().with_suffix(".relion.star"))],
                          cwd=cwd, capture_output=True, text=True, check=False)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "ERROR" not in text and "could not read optics" not in text, text
    if images:
        done = subprocess.run(["relion_image_handler", "--i", str(star.absolute()), "--stats"],
                              cwd=cwd, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        n = len(starfile.read(star, always_dict=True)["particles"])
        assert done.stdout.count("avg=") == n


# ----------------------------------------------------------------- alignments: none invented
def test_no_alignment_is_invented_for_particles_without_one(real: Path, tmp_path: Path) -> None:
    table = open_particles(real / IMPORT)
    star = to_star(table)["particles"]
    assert not ALIGNMENT_LABELS & set(star.columns)
    assert not [f for f in to_cs(table).dtype.names if f.startswith("alignments")]
    save_particles(table, tmp_path / "p.star")
    save_particles(open_particles(tmp_path / "p.star"), tmp_path / "back.cs")
    back = open_particles(tmp_path / "back.cs")
    assert not [f for f in back.native.dtype.names if f.startswith("alignments")]
    with pytest.raises(InputError, match="no 2D alignment"):
        back.require_alignments()  # export-aligned's refusal survives the round trip


def test_relion30_star_without_alignments_gives_cs_without_them(real: Path) -> None:
    out = to_cs(open_particles(real / R30))
    assert not [f for f in out.dtype.names if f.startswith("alignments")]


@pytest.mark.parametrize(("missing", "kept"), [("alignments2D/shift", "alignments2D/pose"),
                                              ("alignments2D/pose", "alignments2D/shift")])
def test_partial_2d_alignment_is_refused_naming_the_missing_field(
        real: Path, tmp_path: Path, missing: str, kept: str) -> None:
    data = rfn.drop_fields(read_cs(real / J2), [missing], usemask=False)
    write_cs(tmp_path / "partial.cs", data)
    with pytest.raises(InputError, match=f"has '{kept}' but no '{missing}'"):
        open_particles(tmp_path / "partial.cs")


def test_partial_3d_alignment_is_refused(real: Path, tmp_path: Path) -> None:
    data = rfn.drop_fields(read_cs(real / REFINE), ["alignments3D/shift"], usemask=False)
    write_cs(tmp_path / "partial.cs", data)
    with pytest.raises(InputError, match="no 'alignments3D/shift'"):
        open_particles(tmp_path / "partial.cs")


@pytest.mark.parametrize("dropped", ["rlnOriginYAngst", "rlnAngleTilt"])
def test_partial_relion_alignment_is_refused(real: Path, tmp_path: Path, dropped: str) -> None:
    star = _write_star_variant(real / R31, tmp_path / "partial.star",
                               lambda b: b["particles"].pop(dropped))
    with pytest.raises(InputError, match=f"no '{dropped}'"):
        open_particles(star)


# ------------------------------------------------------------------- optics: RELION must read it
def test_star_from_cs_without_ctf_is_refused_naming_the_passthrough(real: Path,
                                                                    tmp_path: Path) -> None:
    write_cs(tmp_path / "J2_020_particles.cs", _drop_fields(read_cs(real / J2), "ctf/"))
    table = open_particles(tmp_path / "J2_020_particles.cs")
    with pytest.raises(InputError, match="passthrough") as info:
        save_particles(table, tmp_path / "p.star")
    assert "--voltage" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "p.star").exists()
    assert any("ctf/" in note for note in notes(table, ".star"))


@pytest.mark.relion
def test_star_from_cs_without_ctf_takes_the_options_and_relion_reads_it(
        real: Path, tmp_path: Path) -> None:
    write_cs(tmp_path / "J2_020_particles.cs", _drop_fields(read_cs(real / J2), "ctf/"))
    table = open_particles(tmp_path / "J2_020_particles.cs")
    save_particles(table, tmp_path / "p.star", voltage=300, cs=2.7, amplitude_contrast=0.1)
    optics = starfile.read(tmp_path / "p.star", always_dict=True)["optics"]
    assert optics[["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]].to_numpy(
    ).tolist() == [[300.0, 2.7, 0.1]]
    assert_relion_reads(tmp_path / "p.star", tmp_path)


def test_export_aligned_refuses_before_any_work_when_the_star_could_not_be_read(
        real: Path, tmp_path: Path) -> None:
    from csplugin.jobs.export_aligned import export_aligned

    write_cs(tmp_path / "J2_020_particles.cs", _drop_fields(read_cs(real / J2), "ctf/"))
    with pytest.raises(InputError, match="passthrough"):  # not "stack missing": said first
        export_aligned(open_particles(tmp_path / "J2_020_particles.cs"), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_options_never_replace_the_inputs_values(real: Path) -> None:
    optics = to_star(open_particles(real / J2), voltage=100, cs=9, amplitude_contrast=0.5)["optics"]
    data = read_cs(real / J2)
    assert optics["rlnVoltage"].tolist() == [float(data["ctf/accel_kv"][0])]
    assert optics["rlnSphericalAberration"].tolist() == [float(data["ctf/cs_mm"][0])]


def test_convert_command_refuses_in_one_line_then_accepts_the_options(real: Path,
                                                                     tmp_path: Path) -> None:
    write_cs(tmp_path / "J2_020_particles.cs", _drop_fields(read_cs(real / J2), "ctf/"))
    command = [sys.executable, "-m", "csplugin", "convert", str(tmp_path / "J2_020_particles.cs"),
               "-o", str(tmp_path / "p.star")]
    refused = subprocess.run(command, capture_output=True, text=True, check=False)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "passthrough" in refused.stderr and "--voltage" in refused.stderr
    assert not (tmp_path / "p.star").exists()
    options = ["--voltage", "300", "--cs", "2.7", "--amplitude-contrast", "0.07"]
    done = subprocess.run(command + options, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "note:" in done.stderr and "ctf/" in done.stderr  # says the .cs had no CTF
    optics = starfile.read(tmp_path / "p.star", always_dict=True)["optics"]
    assert optics["rlnAmplitudeContrast"].tolist() == [0.07]


def _no_particle_ctf(blocks: dict[str, pd.DataFrame]) -> None:
    """No per-particle CTF, and optics groups numbered out of order with gaps (so that any
    renumbering 1..G shows)."""
    blocks["particles"] = blocks["particles"].drop(columns=[
        "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfFigureOfMerit"])
    renumber = {1: 7, 2: 3, 3: 12, 4: 1, 5: 5, 6: 9}
    for block in ("optics", "particles"):
        blocks[block]["rlnOpticsGroup"] = blocks[block]["rlnOpticsGroup"].map(renumber)


def test_optics_groups_and_values_survive_star_cs_star_without_particle_ctf(
        real: Path, tmp_path: Path) -> None:
    source = _write_star_variant(real / GROUPS6, tmp_path / "g.star", _no_particle_ctf)
    original = starfile.read(source, always_dict=True)
    save_particles(open_particles(source), tmp_path / "g.cs")
    cs = read_cs(tmp_path / "g.cs")
    np.testing.assert_array_equal(cs["ctf/exp_group_id"], original["particles"]["rlnOpticsGroup"])
    save_particles(open_particles(tmp_path / "g.cs"), tmp_path / "back.star")
    back = starfile.read(tmp_path / "back.star", always_dict=True)
    changed = (back["particles"]["rlnOpticsGroup"].to_numpy()
               != original["particles"]["rlnOpticsGroup"].to_numpy()).sum()
    assert changed == 0
    labels = ["rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
              "rlnImagePixelSize", "rlnImageSize"]
    a = original["optics"][labels].sort_values("rlnOpticsGroup").to_numpy(np.float64)
    b = back["optics"][labels].sort_values("rlnOpticsGroup").to_numpy(np.float64)
    np.testing.assert_allclose(b, a, rtol=1e-6)
    assert len(np.unique(a[:, 4])) == 2  # two pixel sizes: a group mix-up would show


# ------------------------------------------------------------------- classes, uids, coordinates
@pytest.mark.parametrize("classes", [[0, 2, 0, 1, 3], [0, 0, 0, 0, 0]])
def test_relion_class_zero_survives_star_cs_star(real: Path, tmp_path: Path,
                                                 classes: list[int]) -> None:
    def set_classes(blocks: dict[str, pd.DataFrame]) -> None:
        blocks["particles"]["rlnClassNumber"] = classes
    source = _write_star_variant(real / R31, tmp_path / "c.star", set_classes)
    save_particles(open_particles(source), tmp_path / "c.cs")
    cs = read_cs(tmp_path / "c.cs")
    assert "alignments2D/class" not in cs.dtype.names  # no class invented for class 0
    assert "alignments3D/class" not in cs.dtype.names
    save_particles(open_particles(tmp_path / "c.cs"), tmp_path / "back.star")
    back = starfile.read(tmp_path / "back.star", always_dict=True)["particles"]
    assert back["rlnClassNumber"].tolist() == classes


def test_relion_classes_from_one_become_cryosparc_classes_from_zero(real: Path,
                                                                    tmp_path: Path) -> None:
    def set_classes(blocks: dict[str, pd.DataFrame]) -> None:
        blocks["particles"]["rlnClassNumber"] = [1, 2, 3, 1, 2]
    source = _write_star_variant(real / R31, tmp_path / "c.star", set_classes)
    cs = to_cs(open_particles(source))
    assert cs["alignments3D/class"].tolist() == [0, 1, 2, 0, 1]


def test_uid_survives_cs_star_cs(real: Path, tmp_path: Path) -> None:
    data = read_cs(real / J2)
    save_particles(open_particles(real / J2), tmp_path / "p.star")
    star = starfile.read(tmp_path / "p.star", always_dict=True)["particles"]
    np.testing.assert_array_equal(star["rlnCsPluginUid"].to_numpy(np.uint64), data["uid"])
    assert data["uid"].max() > np.iinfo(np.int64).max  # the full uint64 range is exercised
    np.testing.assert_array_equal(to_cs(open_particles(tmp_path / "p.star"))["uid"], data["uid"])


@pytest.mark.relion
def test_relion_keeps_the_uid_column(real: Path, tmp_path: Path) -> None:
    save_particles(open_particles(real / J2), tmp_path / "p.star")
    assert_relion_reads(tmp_path / "p.star", tmp_path)
    theirs = starfile.read(tmp_path / "p.relion.star", always_dict=True)["particles"]
    np.testing.assert_array_equal(theirs["rlnCsPluginUid"].to_numpy(np.uint64),
                                  read_cs(real / J2)["uid"])


def test_coordinates_are_not_invented_without_the_micrograph(real: Path) -> None:
    table = open_particles(real / R31)
    out = to_cs(table)
    assert "location/center_x_frac" not in out.dtype.names
    assert "location/micrograph_shape" not in out.dtype.names
    assert any("rlnCoordinateX" in note for note in notes(table, ".cs"))


def test_coordinates_go_to_location_with_the_micrograph_shape_and_back(real: Path,
                                                                       tmp_path: Path) -> None:
    shutil.copy(real / R31, tmp_path / "r.star")
    particles = starfile.read(tmp_path / "r.star", always_dict=True)["particles"]
    micrograph = tmp_path / particles["rlnMicrographName"].iloc[0]
    micrograph.parent.mkdir(parents=True)
    ny, nx = 1500, 3600  # not square: an x/y swap would show
    with mrcfile.new(micrograph) as mrc:
        mrc.set_data(np.zeros((ny, nx), np.int8))
    save_particles(open_particles(tmp_path / "r.star"), tmp_path / "r.cs")
    cs = read_cs(tmp_path / "r.cs")
    assert cs["location/micrograph_shape"].tolist() == [[ny, nx]] * len(particles)
    np.testing.assert_allclose(cs["location/center_x_frac"], particles["rlnCoordinateX"] / nx,
                               rtol=1e-6)
    np.testing.assert_allclose(cs["location/center_y_frac"], particles["rlnCoordinateY"] / ny,
                               rtol=1e-6)
    back = to_star(open_particles(tmp_path / "r.cs"))["particles"]
    np.testing.assert_allclose(back["rlnCoordinateX"], particles["rlnCoordinateX"], atol=1e-3)
    np.testing.assert_allclose(back["rlnCoordinateY"], particles["rlnCoordinateY"], atol=1e-3)


def test_psi_prior_without_tube_ids_is_not_helical(real: Path, tmp_path: Path) -> None:
    def add_prior(blocks: dict[str, pd.DataFrame]) -> None:
        blocks["particles"]["rlnAnglePsiPrior"] = blocks["particles"]["rlnAnglePsi"]
    table = open_particles(_write_star_variant(real / R31, tmp_path / "p.star", add_prior))
    assert not describe(table)["has_helical"]
    assert not [f for f in to_cs(table).dtype.names if f.startswith("filament/")]

    def add_tubes(blocks: dict[str, pd.DataFrame]) -> None:
        add_prior(blocks)
        blocks["particles"]["rlnHelicalTubeID"] = [1, 1, 2, 2, 2]
    helical = open_particles(_write_star_variant(real / R31, tmp_path / "h.star", add_tubes))
    assert describe(helical)["has_helical"]
    out = to_cs(helical)
    assert out["filament/filament_uid"].tolist() == [1, 1, 2, 2, 2]
    assert "filament/filament_pose" in out.dtype.names


# ------------------------------------------------------------------------------ box size
def test_relion30_box_comes_from_the_stack_header(real: Path) -> None:
    assert to_cs(open_particles(real / R30))["blob/shape"].tolist() == [[320, 320]] * 7


def test_relion30_without_its_stack_is_refused_not_written_with_box_zero(real: Path,
                                                                         tmp_path: Path) -> None:
    shutil.copy(real / R30, tmp_path / "alone.star")
    table = open_particles(tmp_path / "alone.star", project_dir=tmp_path)
    with pytest.raises(InputError, match="box"):
        to_cs(table)
    with pytest.raises(InputError, match="box"):
        save_particles(table, tmp_path / "alone.cs")
    assert not (tmp_path / "alone.cs").exists()


# ------------------------------------------------------------------------ spaces in paths
@pytest.mark.relion
def test_stack_names_and_output_paths_with_spaces_are_read_back_by_relion_and_starfile(
        real: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dir with space"
    folder.mkdir()
    shutil.copy(real / "cryodrgn/relion31.mrcs", folder / "my stack.mrcs")
    table = open_particles(real / R31)
    moved = table.with_columns(image_path="dir with space/my stack.mrcs")
    save_particles(moved, folder / "out put.star")
    names = starfile.read(folder / "out put.star", always_dict=True)["particles"]["rlnImageName"]
    assert names.tolist() == [f"{k:06d}@dir with space/my stack.mrcs" for k in range(1, 6)]
    assert_relion_reads(folder / "out put.star", cwd=tmp_path, images=True)
    back = open_particles(folder / "out put.star", project_dir=tmp_path)
    assert back.particles["image_path"].unique().tolist() == ["dir with space/my stack.mrcs"]
    assert not back.missing_stacks()
    # and through .cs, from the command line, into a folder with a space
    command = [sys.executable, "-m", "csplugin", "convert", str(folder / "out put.star"),
               "-o", str(folder / "again.cs"), "--project-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    save_particles(open_particles(folder / "again.cs", project_dir=tmp_path),
                   folder / "again.star")
    assert_relion_reads(folder / "again.star", cwd=tmp_path, images=True)


# ------------------------------------------------------------------------ RELION reads them all
def test_real_relion30_file_whose_stack_is_absent_is_refused_for_its_box(real: Path,
                                                                        tmp_path: Path) -> None:
    source = real / "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star"
    table = open_particles(source, project_dir=source.parent)
    for suffix in (".cs", ".star"):
        with pytest.raises(InputError, match=r"no box size .*\(0 px\)"):
            save_particles(table, tmp_path / f"p{suffix}", voltage=300, cs=2.7,
                           amplitude_contrast=0.1)


def test_mrc_stacks_get_a_note_for_relion(real: Path) -> None:
    assert any(".mrcs" in note for note in notes(open_particles(real / IMPORT), ".star"))
    assert not any(".mrcs" in note for note in notes(open_particles(real / R31), ".star"))


@pytest.mark.relion
@pytest.mark.parametrize(("source", "images"), [  # images: only .mrcs stacks (RELION 3.1)
    (J2, False), (REFINE, False), (IMPORT, False), (R31, True), (R30, False), (GROUPS6, False),
    ("cryodrgn/relion5.star", False)])
def test_relion_reads_every_star_csplugin_writes(real: Path, tmp_path: Path, source: str,
                                                 images: bool) -> None:
    table = open_particles(real / source, project_dir=(real / source).parent)
    save_particles(table, tmp_path / "p.star", voltage=300, cs=2.7, amplitude_contrast=0.1)
    assert_relion_reads(tmp_path / "p.star", cwd=(real / source).parent, images=images)
    if table.kind == "star":  # and .star -> .cs -> .star too
        save_particles(table, tmp_path / "p.cs")
        save_particles(open_particles(tmp_path / "p.cs", project_dir=(real / source).parent),
                       tmp_path / "q.star", voltage=300, cs=2.7, amplitude_contrast=0.1)
        assert_relion_reads(tmp_path / "q.star", cwd=(real / source).parent, images=images)
