"""Real files from other projects: read right, or refused in one line for the right reason.

Every file used here is in fixtures/real (sources and licences in its README). Variants are
made from those files in tmp_path (a changed header value, a damaged line), never by hand.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import RunCli

from csplugin.core import particles as particles_module
from csplugin.core.identify import NotParticles
from csplugin.core.particles import open_particles
from formats import InputError
from formats.cs import read_cs, write_cs

SCOPE = "csplugin handles 2D single-particle images only"

#: (file, what the refusal names): every tomography file in the corpus.
TOMOGRAPHY = [
    ("cylindra/Class3D_run_it025_data.star", "data_general rlnTomoSubTomosAre2DStacks 1"),
    ("cylindra/Refine3D_run_it050_data.star", "RELION 4/5 subtomogram particles"),
    ("cryoet-data-portal/relion_4_star.star", "RELION 4/5 subtomogram particles"),
    ("cryoet-data-portal/relion_3_star.star", "subtomogram particles (rlnCoordinateZ"),
    ("starfile/one_loop.star", "subtomogram particles (rlnCoordinateZ, rlnCtfImage"),
    ("cryodrgn/sta_testing_bin8.star", "Warp/M particle series"),
    ("cylindra/Picks_particles.star", "particle positions in tomograms"),
    ("cryoet-data-portal/tomoman_relion_star.star", "particle positions in tomograms"),
    ("cryoet-data-portal/stopgap_star.star", "STOPGAP motive list"),
    ("cylindra/tomograms.star", "RELION tomograms table"),
    ("cylindra/tilt_series_13pf_MT.star", "tilt-series table"),
    ("cylindra/Class3D_run_it025_optimisation_set.star", "tomography optimisation set"),
]

#: (file, what the refusal names): real files that are not particle files.
NOT_PARTICLES = [
    ("cylindra/Class3D_job.star", "RELION job.star (parameters of a relion.class3d job)"),
    ("starfile/default_pipeline.star", "RELION pipeline"),
    ("starfile/run_it025_optimiser_2D.star", "RELION optimiser file"),
    ("starfile/run_it025_sampling_2D.star", "RELION sampling file"),
    ("starfile/postprocess.star", "RELION post-processing file"),
]



def assert_one_line(code: int, err: str, text: str) -> None:
    assert code == 2, err
    assert text in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.fixture
def no_stack_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if anything looks for a stack: refusals must come before that."""
    def forbidden(*args: object) -> None:
        raise AssertionError("looked for stacks before refusing")
    monkeypatch.setattr(particles_module, "_resolve_stacks", forbidden)


# ------------------------------------------------------------------------------- tomography
@pytest.mark.parametrize(("name", "what"), TOMOGRAPHY)
def test_tomography_files_are_refused_before_their_stacks_are_looked_for(
        real: Path, name: str, what: str, no_stack_lookup: None) -> None:
    with pytest.raises(NotParticles) as caught:
        open_particles(real / name)
    assert caught.value.tomography
    assert what in str(caught.value) and SCOPE in str(caught.value)


@pytest.mark.parametrize("command", ["convert", "export-aligned", "power-spectrum",
                                     "class-averages", "classify"])
def test_every_command_refuses_subtomograms_in_one_line(real: Path, tmp_path: Path,
                                                        run_cli: RunCli,
                                                        command: str) -> None:
    out = tmp_path / ("out.cs" if command == "convert" else "out")
    code, _, err = run_cli(command, str(real / TOMOGRAPHY[0][0]), "-o", str(out))
    assert_one_line(code, err, SCOPE)
    assert not out.exists() or not any(out.iterdir())


def test_info_describes_a_subtomogram_file_and_exits_2(real: Path,
                                                       run_cli: RunCli) -> None:
    code, out, err = run_cli("info", str(real / "cylindra/Class3D_run_it025_data.star"))
    assert code == 2 and not err
    assert "RELION 5 subtomogram particles" in out and SCOPE in out
    assert "data_particles: 10 rows" in out  # what the file holds, not a one-line refusal


def test_dimensionality_3_alone_is_enough(real: Path, tmp_path: Path) -> None:
    """An optics table with rlnImageDimensionality 3 and no other tomography label."""
    text = (real / "cryodrgn/relion31.star").read_text()
    variant = tmp_path / "dim3.star"
    variant.write_text(text.replace("          256            2", "          256            3"))
    shutil.copy(real / "cryodrgn/relion31.mrcs", tmp_path)
    with pytest.raises(NotParticles, match="rlnImageDimensionality 3 in data_optics"):
        open_particles(variant)


def test_single_particle_files_with_groups_are_not_taken_for_particle_series(real: Path) -> None:
    """The Warp/M rule needs a tilt series per group; RELION 3.1/5 files pass."""
    for name in ("relion31.star", "relion5.star", "relion31.6opticsgroups.star"):
        assert len(open_particles(real / "cryodrgn" / name)) > 0


# --------------------------------------------------------------------- not particle files
@pytest.mark.parametrize(("name", "what"), NOT_PARTICLES)
def test_files_that_are_not_particle_files_are_named(real: Path, name: str, what: str,
                                                      no_stack_lookup: None) -> None:
    with pytest.raises(NotParticles) as caught:
        open_particles(real / name)
    assert not caught.value.tomography and what in str(caught.value)
    assert "not a particle file" in str(caught.value)


def test_optimiser_refusal_names_the_particles_to_pass(real: Path) -> None:
    with pytest.raises(NotParticles, match="pass the particles it names: "
                                           "Class2D/job006/run_it025_data.star"):
        open_particles(real / "starfile/run_it025_optimiser_2D.star")


def test_mtf_table_is_named(real: Path, tmp_path: Path) -> None:
    """An MTF table (the two labels and layout RELION's mtf_*.star files use; values from
    the postprocess.star FSC block, so that the file is made from a real one)."""
    mtf = tmp_path / "mtf_k2_300kV.star"
    mtf.write_text("data_\n\nloop_\n_rlnResolutionInversePixel #1\n_rlnMtfValue #2\n"
                   "0.000000 1.000000\n0.010000 0.995000\n0.500000 0.300000\n")
    with pytest.raises(NotParticles, match="detector MTF table"):
        open_particles(mtf)


def test_real_git_lfs_pointer_is_named(real: Path, tmp_path: Path,
                                       run_cli: RunCli) -> None:
    """cryosparc-tools' tests/data/job096_run_data.star is stored in Git LFS: a clone without
    `git lfs pull` holds this 133-byte pointer instead of the 12 MB star."""
    pointer = real / "cryosparc-tools/job096_run_data.star"
    code, _, err = run_cli("convert", str(pointer), "-o", str(tmp_path / "o.cs"))
    assert_one_line(code, err, "is a Git LFS pointer; its 12,352,156 bytes were never downloaded "
                               "(run `git lfs pull`")
    assert not (tmp_path / "o.cs").exists()


@pytest.mark.parametrize("suffix", [".cs", ".star"])
def test_git_lfs_pointer_is_named_for_every_input_kind(real: Path, tmp_path: Path,
                                                       suffix: str) -> None:
    pointer = tmp_path / f"particles{suffix}"
    shutil.copy(real / "cryosparc-tools/job096_run_data.star", pointer)
    with pytest.raises(NotParticles, match="Git LFS pointer"):
        open_particles(pointer)


def test_git_lfs_pointer_stack_is_named_by_info(real: Path, tmp_path: Path,
                                                run_cli: RunCli) -> None:
    shutil.copy(real / "cryodrgn/empiar_10076_7.star", tmp_path)
    (tmp_path / "empiar_10076_7.mrc").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 2868224\n")
    code, out, _ = run_cli("info", str(tmp_path / "empiar_10076_7.star"),
                           "--project-dir", str(tmp_path))
    assert code == 2 and "Git LFS pointer" in out


# ----------------------------------------------------------------------- optics groups
def test_optics_table_without_particle_group_column_reads_as_relion_does(real: Path) -> None:
    """cryodrgn's toy_projections_13.star: one optics group, particles without
    rlnOpticsGroup. RELION 3.1 reads every particle into that group; so does csplugin."""
    table = open_particles(real / "cryodrgn/toy_projections_13.star")
    assert len(table) == 13
    assert (table.particles["optics_group"] == 1).all()
    assert np.allclose(table.particles["pixel_size"], 1.035)
    assert (table.particles["box"] == 300).all()


def test_several_different_optics_groups_without_particle_column_are_refused(
        real: Path, tmp_path: Path) -> None:
    text = (real / "cryodrgn/toy_projections_13.star").read_text()
    row = next(line for line in text.splitlines() if line.startswith("1 opticsGroup1"))
    other = row.replace("1 opticsGroup1", "2 opticsGroup2").replace("1.035", "2.070")
    variant = tmp_path / "two.star"
    variant.write_text(text.replace(row, row + "\n" + other))
    with pytest.raises(InputError, match="2 different optics groups but its particles lack "
                                         "rlnOpticsGroup"):
        open_particles(variant)


def test_identical_optics_groups_without_particle_column_read_as_group_1(
        real: Path, tmp_path: Path) -> None:
    """RELION puts such particles in group 1; when every group says the same, that is safe."""
    text = (real / "cryodrgn/toy_projections_13.star").read_text()
    row = next(line for line in text.splitlines() if line.startswith("1 opticsGroup1"))
    variant = tmp_path / "same.star"
    variant.write_text(text.replace(row, row + "\n" + row.replace("1 opticsGroup1",
                                                                   "2 opticsGroup2")))
    assert (open_particles(variant).particles["optics_group"] == 1).all()


def test_particle_in_an_unlisted_optics_group_is_named(real: Path, tmp_path: Path) -> None:
    text = (real / "cryodrgn/relion31.star").read_text()
    variant = tmp_path / "group9.star"
    variant.write_text(text.replace("relion31.mrcs            1", "relion31.mrcs            9", 1))
    with pytest.raises(InputError, match="particle 1 .*optics group 9, which data_optics does "
                                         "not list"):
        open_particles(variant)


# ------------------------------------------------------------------ header values on trust
def test_no_pixel_size_anywhere_is_refused_naming_the_field(real: Path, tmp_path: Path,
                                                            run_cli: RunCli
                                                            ) -> None:
    """empiar_10076_7.mrc (a cryoCAT tilt stack) has header voxel size 0; a star without
    rlnMagnification/rlnDetectorPixelSize then gives no pixel size at all."""
    star = _without_pixel_size(real, tmp_path)
    with pytest.raises(InputError) as caught:
        open_particles(star, project_dir=tmp_path)
    message = str(caught.value)
    assert "has no pixel size" in message and "voxel size 0" in message
    assert "rlnImagePixelSize" in message and "rlnDetectorPixelSize" in message
    for command in ("convert", "export-aligned"):
        out = tmp_path / ("o.cs" if command == "convert" else "o")
        code, _, err = run_cli(command, str(star), "-o", str(out),
                               "--project-dir", str(tmp_path))
        assert_one_line(code, err, "has no pixel size")
        assert not out.exists()


def test_pixel_size_zero_is_refused_not_turned_into_nan_shifts(real: Path, tmp_path: Path,
                                                               run_cli: RunCli
                                                               ) -> None:
    text = (real / "cryodrgn/relion31.star").read_text()
    star = tmp_path / "pix0.star"
    star.write_text(text.replace("300.000000     2.806000", "300.000000     0.000000"))
    code, _, err = run_cli("convert", str(star), "-o", str(tmp_path / "o.cs"))
    assert_one_line(code, err, "has pixel size 0 (rlnImagePixelSize in data_optics)")
    assert "RuntimeWarning" not in err and not (tmp_path / "o.cs").exists()


def test_cs_with_blob_psize_zero_is_refused(real: Path, tmp_path: Path) -> None:
    data = read_cs(real / "cryodrgn/empiar_10076_7.cs")
    data["blob/psize_A"][:] = 0
    write_cs(tmp_path / "p0.cs", data)
    with pytest.raises(InputError, match=r"row 0 \(uid \d+\) has pixel size 0 \(blob/psize_A\).*"
                                         "voxel size 0"):
        open_particles(tmp_path / "p0.cs", project_dir=real / "cryodrgn")


def _without_pixel_size(real: Path, tmp_path: Path) -> Path:
    shutil.copy(real / "cryodrgn/empiar_10076_7.mrc", tmp_path)
    lines = []
    for line in (real / "cryodrgn/empiar_10076_7.star").read_text().splitlines():
        if line.startswith(("_rlnMagnification", "_rlnDetectorPixelSize")):
            continue
        lines.append(" ".join(line.split()[:-2]) if "@" in line else line)
    star = tmp_path / "nopix.star"
    star.write_text("\n".join(lines) + "\n")
    return star


# --------------------------------------------------------------- values checked up front
def test_nan_psi_is_refused_at_open_naming_line_particle_and_field(real: Path,
                                                                  tmp_path: Path) -> None:
    star = _edit_particle_value(real, tmp_path, row=1, label_index=14, value="nan")
    with pytest.raises(InputError, match=r"particle 2 \(line 51, 000002@relion31.mrcs\): "
                                         "rlnAnglePsi is nan, not a finite number"):
        open_particles(star)


def test_infinite_cs_shift_is_refused_at_open(real: Path, tmp_path: Path) -> None:
    data = read_cs(real / "cryodrgn/cryosparc_J2_particles_exported.cs")
    data["alignments2D/shift"][3, 1] = np.inf
    write_cs(tmp_path / "inf.cs", data)
    with pytest.raises(InputError, match=rf"row 3 \(uid {data['uid'][3]}\): alignments2D/shift "
                                         r"is \[.*inf\], not a finite number"):
        open_particles(tmp_path / "inf.cs")


def test_non_numeric_value_names_label_and_line(real: Path, tmp_path: Path,
                                                run_cli: RunCli) -> None:
    star = _edit_particle_value(real, tmp_path, row=1, label_index=14, value="12.5x")
    code, _, err = run_cli("convert", str(star), "-o", str(tmp_path / "o.cs"))
    assert_one_line(code, err, "particle 2 (line 51, 000002@relion31.mrcs): rlnAnglePsi is "
                               "'12.5x', not a number")


@pytest.mark.parametrize(("label_index", "value", "message"), [
    (15, "nan", "rlnClassNumber is nan, not a finite number"),
    (15, "2.5", "rlnClassNumber is 2.5, not a whole number"),
    (6, "inf", "rlnDefocusU is inf, not a finite number"),
    (22, "nan", "rlnOpticsGroup is nan, not a finite number"),
    (23, "-inf", "rlnOriginXAngst is -inf, not a finite number"),
])
def test_values_that_would_turn_into_garbage_are_refused_at_open(
        real: Path, tmp_path: Path, label_index: int, value: str, message: str) -> None:
    """Before: a NaN class became class -9223372036854775808, 2.5 became class 2, a NaN
    defocus gave NaN CTFs minutes later."""
    star = _edit_particle_value(real, tmp_path, row=1, label_index=label_index, value=value)
    with pytest.raises(InputError, match=r"particle 2 \(line 51, 000002@relion31.mrcs\): "
                                         + message.replace("(", r"\(")):
        open_particles(star)


def test_garbage_line_is_named_not_blamed_on_the_pixel_size(real: Path, tmp_path: Path,
                                                            run_cli: RunCli
                                                            ) -> None:
    lines = (real / "cryodrgn/relion31.star").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if "000001@" in line)
    lines.insert(first + 1, "garbage here")
    star = tmp_path / "garbage.star"
    star.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli("info", str(star))
    assert_one_line(code, err, f"line {first + 2} has 2 values but data_particles has 26 labels")
    assert "pixel size" not in err


def test_cs_with_pose_but_no_shift_names_the_missing_field(real: Path, tmp_path: Path) -> None:
    data = read_cs(real / "cryodrgn/cryosparc_J2_particles_exported.cs")
    names = [n for n in data.dtype.names if n != "alignments2D/shift"]
    write_cs(tmp_path / "noshift.cs", data[names])
    with pytest.raises(InputError, match="alignments2D/shift"):
        open_particles(tmp_path / "noshift.cs")


def _edit_particle_value(real: Path, tmp_path: Path, row: int, label_index: int,
                         value: str) -> Path:
    lines = (real / "cryodrgn/relion31.star").read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if "@relion31.mrcs" in line]
    fields = lines[rows[row]].split()
    fields[label_index] = value
    lines[rows[row]] = " ".join(fields)
    shutil.copy(real / "cryodrgn/relion31.mrcs", tmp_path)
    star = tmp_path / "edited.star"
    star.write_text("\n".join(lines) + "\n")
    return star


# ------------------------------------------------------- more files that are not particles
def test_cs_without_blob_slot_is_named(real: Path) -> None:
    """cryosparc-tools' 4k_dataset.cs: alignments, location and pick_stats but no blob slot."""
    with pytest.raises(NotParticles, match="cryoSPARC particle metadata without images.*no "
                                           "blob/\\* slot"):
        open_particles(real / "cryosparc-tools/4k_dataset.cs")


def test_cs_class_averages_are_not_taken_for_particles(real: Path, tmp_path: Path) -> None:
    """A templates dataset (blob + alignments2D/num_particles), made from the real J2 file."""
    data = read_cs(real / "cryodrgn/cryosparc_J2_particles_exported.cs")
    names = ["uid", "blob/path", "blob/idx", "blob/shape", "blob/psize_A", "alignments2D/class"]
    import numpy.lib.recfunctions as rfn
    templates = rfn.append_fields(data[names][:5], "alignments2D/num_particles",
                                  np.arange(5, dtype=np.uint32), usemask=False)
    write_cs(tmp_path / "J2_020_class_averages.cs", templates)
    with pytest.raises(NotParticles, match="class-averages"):
        open_particles(tmp_path / "J2_020_class_averages.cs")


def test_star_without_image_names_is_named(real: Path, tmp_path: Path) -> None:
    """relion31.star without rlnImageName: picked coordinates; without coordinates too: a
    micrograph list."""
    lines = (real / "cryodrgn/relion31.star").read_text().splitlines()
    labels = [line.split()[0] for line in lines if line.startswith("_rln")]
    start = lines.index(next(line for line in lines if line.startswith("_rlnCoordinateX")))
    particle_labels = labels[labels.index("_rlnCoordinateX"):]

    def drop(names: set[str]) -> Path:
        keep = [i for i, label in enumerate(particle_labels) if label not in names]
        out = lines[:start] + [f"{particle_labels[i]} #{k + 1}" for k, i in enumerate(keep)]
        for line in lines[start + len(particle_labels):]:
            values = line.split()
            out.append(" ".join(values[i] for i in keep) if len(values) == len(particle_labels)
                       else line)
        path = tmp_path / f"drop{len(names)}.star"
        path.write_text("\n".join(out) + "\n")
        return path

    with pytest.raises(NotParticles, match="picked coordinates"):
        open_particles(drop({"_rlnImageName"}))
    with pytest.raises(NotParticles, match="list of micrographs"):
        open_particles(drop({"_rlnImageName", "_rlnCoordinateX", "_rlnCoordinateY"}))


def test_model_file_is_named(real: Path, tmp_path: Path) -> None:
    """A model file (data_model_general + data_model_classes), the layout RELION's
    run_itNNN_model.star and csplugin's own class_averages.star use."""
    model = tmp_path / "run_it025_model.star"
    model.write_text("data_model_general\n\n_rlnReferenceDimensionality 2\n_rlnNrClasses 1\n\n"
                     "data_model_classes\n\nloop_\n_rlnReferenceImage #1\n"
                     "_rlnClassDistribution #2\n000001@run_it025_classes.mrcs 1.0\n")
    with pytest.raises(NotParticles, match="RELION model file"):
        open_particles(model)


def test_image_stack_given_as_metadata_is_named(real: Path, run_cli: RunCli
                                                ) -> None:
    code, out, _ = run_cli("info", str(real / "cryodrgn/relion31.mrcs"))
    assert code == 2 and "an MRC image stack (5 sections of 256x256 px)" in out


def test_volume_named_without_slice_is_refused(real: Path, tmp_path: Path,
                                               run_cli: RunCli) -> None:
    """A name without N@ is the whole file, which RELION reads as one 3D volume when it has
    several sections; slice 1 must not be taken for the particle."""
    text = (real / "cryodrgn/relion31.star").read_text()
    for i in range(1, 6):
        text = text.replace(f"00000{i}@relion31.mrcs", "relion31.mrcs")
    star = tmp_path / "volumes.star"
    star.write_text(text)
    shutil.copy(real / "cryodrgn/relion31.mrcs", tmp_path)
    code, out, _ = run_cli("info", str(star), "--project-dir", str(tmp_path))
    assert code == 2 and "3D volume" in out
    code, _, err = run_cli("export-aligned", str(star), "--project-dir", str(tmp_path),
                           "-o", str(tmp_path / "out"))
    assert_one_line(code, err, "one 3D volume (as RELION reads it)")


def test_single_image_file_named_without_slice_is_read(real: Path, tmp_path: Path) -> None:
    """A single-section file named without N@ is one 2D image (RELION's reading too)."""
    from formats.mrc import open_stack, write_stack

    images = open_stack(real / "cryodrgn/relion31.mrcs").read([0, 1])
    for i in range(2):
        write_stack(tmp_path / f"p{i}.mrc", images[i:i + 1], voxel_size=2.806)
    text = (real / "cryodrgn/relion31.star").read_text()
    text = text.replace("000001@relion31.mrcs", "p0.mrc").replace("000002@relion31.mrcs",
                                                                  "p1.mrc")
    lines = [line for line in text.splitlines() if "@relion31.mrcs" not in line]
    star = tmp_path / "single.star"
    star.write_text("\n".join(lines) + "\n")
    table = open_particles(star, project_dir=tmp_path)
    np.testing.assert_array_equal(table.images[:], images)


@pytest.mark.parametrize("field", ["ctf/df1_A", "alignments2D/class_posterior"])
def test_non_finite_cs_ctf_or_posterior_is_refused_at_open(real: Path, tmp_path: Path,
                                                           field: str) -> None:
    data = read_cs(real / "cryodrgn/cryosparc_J2_particles_exported.cs")
    data[field][5] = np.nan
    write_cs(tmp_path / "nan.cs", data)
    with pytest.raises(InputError, match=rf"row 5 \(uid {data['uid'][5]}\): {field} is nan"):
        open_particles(tmp_path / "nan.cs")


def test_extended_header_variant_reads_the_same_images(real: Path, tmp_path: Path) -> None:
    """relion31.mrcs rewritten with a 1024-byte extended header (nsymbt): same images."""
    from formats.mrc import open_stack

    raw = (real / "cryodrgn/relion31.mrcs").read_bytes()
    header = bytearray(raw[:1024])
    header[92:96] = np.int32(1024).tobytes()  # nsymbt
    shutil.copy(real / "cryodrgn/relion31.star", tmp_path)
    (tmp_path / "relion31.mrcs").write_bytes(bytes(header) + b"\0" * 1024 + raw[1024:])
    table = open_particles(tmp_path / "relion31.star", project_dir=tmp_path)
    original = open_stack(real / "cryodrgn/relion31.mrcs").read(range(5))
    np.testing.assert_array_equal(table.images[:], original)


def test_single_particle_star_with_ctf_image_column_is_read(real: Path, tmp_path: Path) -> None:
    """RELION's single-particle Extract copies rlnCtfImage (the micrograph's CTF power
    spectrum) into particle rows (e.g. 3dem/em-testdata particles_1k.star); that is not a
    subtomogram's 3D CTF: relion31.star with that column must still read."""
    lines = (real / "cryodrgn/relion31.star").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("_rln"))
    lines.insert(last + 1, "_rlnCtfImage #27")
    lines = [line + " CtfFind/job004/Movies/mic_PS.ctf:mrc" if "@relion31.mrcs" in line
             else line for line in lines]
    shutil.copy(real / "cryodrgn/relion31.mrcs", tmp_path)
    star = tmp_path / "with_ctf_image.star"
    star.write_text("\n".join(lines) + "\n")
    assert len(open_particles(star, project_dir=tmp_path)) == 5


@pytest.mark.parametrize(("text", "what"), [
    ("data_coordinate_files\n\nloop_\n_rlnMicrographName #1\n_rlnMicrographCoordinates #2\n"
     "MotionCorr/job002/Movies/m1.mrc AutoPick/job006/Movies/m1_autopick.star\n",
     "list of coordinate files, one per micrograph"),
    ("data_general\n\n_rlnImageSizeX 3710\n_rlnMotionModelVersion 1\n\ndata_global_shift\n\n"
     "loop_\n_rlnMicrographFrameNumber #1\n_rlnMicrographShiftX #2\n_rlnMicrographShiftY #3\n"
     "1 0.0 0.0\n", "motion-correction file"),
])
def test_relion_preprocessing_files_are_named(tmp_path: Path, text: str, what: str) -> None:
    """Layouts of RELION's autopick.star and a MotionCorr movie star (RELION's own test files
    in 3dem/em-testdata carry no licence, so only their block and label names are used)."""
    star = tmp_path / "f.star"
    star.write_text(text)
    with pytest.raises(NotParticles, match=what):
        open_particles(star)


def test_unbalanced_quote_names_the_line(real: Path, tmp_path: Path) -> None:
    """Found by mutating relion31.star: an unbalanced quote was a ValueError traceback."""
    lines = (real / "cryodrgn/relion31.star").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if "000002@" in line)
    lines[row] = lines[row].split("000002@")[0] + "'000002@relion31.mrcs"
    star = tmp_path / "quote.star"
    star.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=f"line {row + 1} has an unbalanced quote"):
        open_particles(star)


def test_mutated_real_stars_give_one_line_errors_only(real: Path, tmp_path: Path) -> None:
    """Random byte edits of real stars (seeded): every outcome is a table or an InputError,
    never another exception (the way the unbalanced quote above was found)."""
    import random

    sources = [real / "cryodrgn" / name for name in ("relion31.star", "empiar_10076_7.star",
                                                     "toy_projections_13.star", "relion5.star")]
    sources += sorted((real / "cylindra").glob("*.star"))
    rng = random.Random(15)
    tokens = [b"nan", b"inf", b'"', b"'", b"\n", b"data_x\n", b"loop_\n", b"_rlnFoo\n", b"-1"]
    for _ in range(300):
        data = bytearray(rng.choice(sources).read_bytes())
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[i] = rng.choice(b"0123456789.-+eE nan\"'#_\t\n@xyz")
            elif op < 0.7:
                del data[i:i + rng.randint(1, 20)]
            else:
                data[i:i] = rng.choice(tokens)
        star = tmp_path / "mutated.star"
        star.write_bytes(bytes(data))
        try:
            open_particles(star, project_dir=real / "cryodrgn")
        except InputError:
            pass


def test_cs_with_damaged_text_names_the_row(real: Path, tmp_path: Path) -> None:
    """A byte flipped in a blob/path (mutating the real J2 file) was a UnicodeDecodeError."""
    data = read_cs(real / "cryodrgn/cryosparc_J2_particles_exported.cs")
    path = bytearray(data["blob/path"][4])
    path[5] = 0x91
    data["blob/path"][4] = bytes(path)
    write_cs(tmp_path / "damaged.cs", data)
    with pytest.raises(InputError, match=rf"row 4 \(uid {data['uid'][4]}\): blob/path is not "
                                         "UTF-8 text"):
        open_particles(tmp_path / "damaged.cs")


def test_mutated_real_cs_files_give_one_line_errors_only(real: Path, tmp_path: Path) -> None:
    """Random byte edits of real .cs files (seeded): a table or an InputError, nothing else."""
    import random

    sources = [real / "cryodrgn/cryosparc_J2_particles_exported.cs",
               real / "cryodrgn/empiar_10076_7.cs",
               real / "derived/cryosparc_J2_particles_exported.csdat.cs"]
    rng = random.Random(11)
    for _ in range(200):
        data = bytearray(rng.choice(sources).read_bytes())
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        mutated = tmp_path / "mutated.cs"
        mutated.write_bytes(bytes(data))
        try:
            open_particles(mutated, project_dir=real / "cryodrgn")
        except InputError:
            pass
