"""Readers and writers on the real files in fixtures/real and on edge cases."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from csplugin.core.images import check_stacks, read_chunk
from csplugin.core.native import to_cs, to_star
from csplugin.core.particles import open_particles
from formats import InputError
from formats.cs import merge_passthrough, read_cs, write_cs
from formats.mrc import StackWriter, open_stack
from formats.star import read_star, split_image_names, write_star


def test_empiar_cs_and_star_give_identical_pixels(real: Path) -> None:
    """blob/idx is 0-based, N@ is 1-based: both files address the same 7 images."""
    a = open_particles(real / "cryodrgn/empiar_10076_7.cs")
    b = open_particles(real / "cryodrgn/empiar_10076_7.star")
    assert a.particles["stack_index"].tolist() == list(range(7))
    assert b.particles["stack_index"].tolist() == list(range(7))
    images_a = read_chunk(a, np.arange(7), check_stacks(a))
    images_b = read_chunk(b, np.arange(7), check_stacks(b))
    np.testing.assert_array_equal(images_a, images_b)
    raw = mrcfile.read(real / "cryodrgn/empiar_10076_7.mrc")
    np.testing.assert_array_equal(images_a, raw)
    assert a.particles["pixel_size"].iloc[0] == pytest.approx(1.31, abs=1e-5)
    assert b.particles["pixel_size"].iloc[0] == pytest.approx(1e4 * 5 / 38168)


def test_exported_2d_cs_converts_to_relion_fields(real: Path) -> None:
    raw = np.load(real / "cryodrgn/cryosparc_J2_particles_exported.cs")
    star = to_star(open_particles(real / "cryodrgn/cryosparc_J2_particles_exported.cs"))
    p, optics = star["particles"], star["optics"]
    np.testing.assert_allclose(p["rlnAnglePsi"], np.rad2deg(raw["alignments2D/pose"].astype(float)))
    psize = raw["blob/psize_A"].astype(float)
    np.testing.assert_allclose(p["rlnOriginXAngst"], raw["alignments2D/shift"][:, 0] * psize)
    np.testing.assert_allclose(p["rlnOriginYAngst"], raw["alignments2D/shift"][:, 1] * psize)
    np.testing.assert_array_equal(p["rlnClassNumber"], raw["alignments2D/class"] + 1)
    assert p["rlnImageName"].iloc[0] == ("000001@J1/imported/"
                                         "000090334788266266069_18jam15b_0345_ali_DW.mrcs")
    assert p["rlnImageName"].iloc[21].startswith("000022@J1/")
    np.testing.assert_allclose(p["rlnDefocusAngle"],
                               np.rad2deg(raw["ctf/df_angle_rad"].astype(float)))
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(1.345, abs=1e-6)
    assert optics["rlnImageSize"].iloc[0] == 300


def test_csdat_reads_like_numpy_encoding(real: Path) -> None:
    a = read_cs(real / "cryodrgn/cryosparc_J2_particles_exported.cs")
    b = read_cs(real / "derived/cryosparc_J2_particles_exported.csdat.cs")
    assert a.dtype.names == b.dtype.names
    for name in a.dtype.names:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize(("name", "sizes", "n"), [
    ("cryodrgn/empiar_10076_7.star", [1.31], 7),
    ("cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star", [1.035], 5),
    ("cryodrgn/relion31.star", [2.806], 5),
    ("cryodrgn/relion5.star", [0.89], 17),
    ("cryodrgn/relion31.6opticsgroups.star", [1.24, 1.25], 139),
])
def test_relion_versions_pixel_sizes(real: Path, name: str, sizes: list[float], n: int) -> None:
    table = open_particles(real / name)
    assert len(table) == n
    np.testing.assert_allclose(sorted(table.particles["pixel_size"].unique()), sizes, atol=2e-5)


def test_relion30_pixel_origins_and_six_optics_groups(real: Path) -> None:
    old = open_particles(real / "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    np.testing.assert_allclose(old.particles["shift_x"][:2], [-0.14063, -0.14062])
    np.testing.assert_allclose(old.particles["angle"][0], np.deg2rad(98.225690))
    groups = open_particles(real / "cryodrgn/relion31.6opticsgroups.star")
    raw = read_star(real / "cryodrgn/relion31.6opticsgroups.star")
    by_group = raw["optics"].set_index("rlnOpticsGroup")["rlnImagePixelSize"]
    expected = by_group.loc[raw["particles"]["rlnOpticsGroup"]].to_numpy()
    np.testing.assert_allclose(groups.particles["pixel_size"], expected)
    origin_A = raw["particles"][["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    np.testing.assert_allclose(groups.particles[["shift_x", "shift_y"]], origin_A / expected[:,
                                                                                             None])
    with pytest.raises(InputError, match="mixes pixel sizes"):
        groups.pixel_size()


def test_relion31_images_and_classes(real: Path) -> None:
    table = open_particles(real / "cryodrgn/relion31.star")
    raw = read_star(real / "cryodrgn/relion31.star")["particles"]
    np.testing.assert_array_equal(table.class_numbers(), raw["rlnClassNumber"])
    np.testing.assert_array_equal(table.particles["class_index"], raw["rlnClassNumber"] - 1)
    images = read_chunk(table, np.arange(5), check_stacks(table))
    with pytest.warns(RuntimeWarning), mrcfile.open(real / "cryodrgn/relion31.mrcs",
                                                    permissive=True) as mrc:
        np.testing.assert_array_equal(images, mrc.data)


def _assert_same_fields(a: np.ndarray, b: np.ndarray, fields: list[str]) -> None:
    for name in fields:
        if a.dtype[name].kind == "S":
            np.testing.assert_array_equal(np.char.lstrip(a[name], b">"), b[name], err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_cs_star_cs_round_trip_is_exact(real: Path, tmp_path: Path) -> None:
    source = real / "cryodrgn/cryosparc_J2_particles_exported.cs"
    original = read_cs(source)
    write_star(tmp_path / "p.star", to_star(open_particles(source)))
    back = to_cs(open_particles(tmp_path / "p.star"))
    carried = ["blob/path", "blob/idx", "blob/shape", "blob/psize_A", "alignments2D/pose",
               "alignments2D/shift", "alignments2D/class", "alignments2D/class_posterior",
               "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm",
               "ctf/amp_contrast", "ctf/phase_shift_rad", "ctf/bfactor", "ctf/scale",
               "ctf/exp_group_id"]
    _assert_same_fields(original, back, carried)


def test_star_cs_star_round_trip_is_exact(real: Path, tmp_path: Path) -> None:
    source = real / "cryodrgn/relion31.star"
    original = read_star(source)
    write_cs(tmp_path / "p.cs", to_cs(open_particles(source)))
    back = to_star(open_particles(tmp_path / "p.cs"))
    labels = ["rlnImageName", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
              "rlnClassNumber", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
              "rlnCtfBfactor", "rlnCtfScalefactor", "rlnMaxValueProbDistribution",
              "rlnMicrographName"]  # pixel coordinates need the micrograph shape in .cs
    converted = {"rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusAngle",
                 "rlnPhaseShift"}
    for label in labels:
        a, b = original["particles"][label].to_numpy(), back["particles"][label].to_numpy()
        if label in converted:  # stored in .cs as float32 radians / pixels: one float32 ulp
            np.testing.assert_allclose(a, b, rtol=2.5e-7, atol=1e-6, err_msg=label)
        elif a.dtype.kind in "fi":  # .cs holds float32: exact to float32 precision
            np.testing.assert_array_equal(a.astype(np.float32), b.astype(np.float32), err_msg=label)
        else:
            np.testing.assert_array_equal(a, b, err_msg=label)
    for label in ["rlnImagePixelSize", "rlnImageSize", "rlnVoltage", "rlnSphericalAberration",
                  "rlnAmplitudeContrast"]:
        np.testing.assert_allclose(original["optics"][label], back["optics"][label], rtol=1e-7)


def test_star_written_star_keeps_every_label(real: Path, tmp_path: Path) -> None:
    source = real / "cryodrgn/relion5.star"
    original = read_star(source)
    write_star(tmp_path / "p.star", to_star(open_particles(source)))
    text = (tmp_path / "p.star").read_text()
    assert text.startswith("# version 30001")
    back = read_star(tmp_path / "p.star")
    assert set(original["particles"].columns) <= set(back["particles"].columns)
    assert set(original["optics"].columns) <= set(back["optics"].columns)
    for label in original["particles"].columns:
        a, b = original["particles"][label], back["particles"][label]
        if label == "rlnImageName":  # same slice and stack; written with 6 digits
            for x, y in zip(split_image_names(a), split_image_names(b)):
                np.testing.assert_array_equal(x, y)
        elif a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-6, err_msg=label)
        else:
            np.testing.assert_array_equal(a.astype(str), b.astype(str), err_msg=label)


def test_written_cs_loads_in_cryosparc_tools(job, tmp_path: Path) -> None:
    from cryosparc.dataset import Dataset

    write_cs(tmp_path / "out.cs", to_cs(open_particles(job.particles_cs)))
    dataset = Dataset.load(str(tmp_path / "out.cs"))
    assert len(dataset) == len(job.angles)
    np.testing.assert_allclose(dataset["alignments2D/pose"], job.angles, atol=1e-6)
    assert dataset["blob/path"][0].startswith("J2/extract/")
    assert "ctf/df1_A" in dataset.fields()  # passthrough fields merged in


def test_passthrough_is_merged_by_uid_not_order(job) -> None:
    main, passthrough = read_cs(job.particles_cs), read_cs(job.passthrough_cs)
    assert not np.array_equal(main["uid"], passthrough["uid"])  # rows are in another order
    merged = merge_passthrough(main, passthrough)
    order = {uid: i for i, uid in enumerate(passthrough["uid"])}
    rows = [order[u] for u in main["uid"]]
    np.testing.assert_array_equal(merged["ctf/df1_A"], passthrough["ctf/df1_A"][rows])
    with pytest.raises(InputError, match="lacks 1 of"):
        merge_passthrough(main, passthrough[1:], "pt.cs")


def test_image_names_any_digit_width() -> None:
    numbers, stacks = split_image_names(np.array(["1@a.mrcs", "00000012@b/c.mrcs",
                                                  "000003@d.mrcs"]))
    assert numbers.tolist() == [1, 12, 3]
    assert stacks.tolist() == ["a.mrcs", "b/c.mrcs", "d.mrcs"]
    with pytest.raises(InputError, match="1-based"):
        split_image_names(np.array(["0@a.mrcs"]))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.int16, np.uint16])
def test_mrc_modes_read_in_any_order(tmp_path: Path, dtype: type) -> None:
    data = (np.arange(5 * 6 * 6) % 100).reshape(5, 6, 6).astype(dtype)
    mrcfile.write(tmp_path / "s.mrcs", data)
    stack = open_stack(tmp_path / "s.mrcs")
    assert (stack.n, stack.box) == (5, (6, 6))
    np.testing.assert_array_equal(stack.read([4, 0, 1, 1]), data[[4, 0, 1, 1]].astype(np.float32))


def test_stack_writer_header_and_atomicity(tmp_path: Path) -> None:
    images = np.random.default_rng(0).normal(size=(7, 8, 8)).astype(np.float32)
    with StackWriter(tmp_path / "a.mrcs", 7, 8, voxel_size=1.7) as writer:
        writer.write(images[:3])
        assert not (tmp_path / "a.mrcs").exists()  # appears only when complete
        writer.write(images[3:])
    with mrcfile.open(tmp_path / "a.mrcs") as mrc:
        assert mrc.is_image_stack() and mrc.header.ispg == 0
        assert mrc.voxel_size.x == pytest.approx(1.7)
        np.testing.assert_array_equal(mrc.data, images)
        assert mrc.header.dmax == pytest.approx(images.max())
        assert mrc.header.dmean == pytest.approx(images.mean(), abs=1e-6)
    with pytest.raises(ValueError, match="wrote 3 of 7"):
        with StackWriter(tmp_path / "b.mrcs", 7, 8, voxel_size=1.0) as writer:
            writer.write(images[:3])
    assert list(tmp_path.iterdir()) == [tmp_path / "a.mrcs"]  # no temp files left


def test_bad_files_raise_input_errors(real: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "obj.cs"
    with open(pickled, "wb") as f:
        np.save(f, np.array([(1, {"a": 1})], dtype=[("uid", "<u8"), ("x", "O")]), allow_pickle=True)
    with pytest.raises(InputError, match="pickled"):
        read_cs(pickled)
    truncated = tmp_path / "t.cs"
    exported = real / "cryodrgn/cryosparc_J2_particles_exported.cs"
    truncated.write_bytes(exported.read_bytes()[:3000])
    with pytest.raises(InputError, match="t.cs"):
        read_cs(truncated)
    short = tmp_path / "short.mrcs"
    short.write_bytes((real / "cryodrgn/relion31.mrcs").read_bytes()[:-1000])
    with pytest.raises(InputError, match="truncated"):
        open_stack(short)
    garbage = tmp_path / "g.star"
    garbage.write_text("data_\nloop_\n_rlnAnglePsi #1\n")
    with pytest.raises(InputError, match="rlnImageName"):
        open_particles(garbage)
    with pytest.raises(InputError, match=r"no blob/\* slot"):  # named: csplugin.core.identify
        open_particles(real / "cryosparc-tools/4k_dataset.cs")


def test_star_optics_groups_survive_writing(real: Path, tmp_path: Path) -> None:
    """Group numbers are kept even where names and numbers disagree (group 1 = opticsGroup5)."""
    source = real / "cryodrgn/relion31.6opticsgroups.star"
    write_star(tmp_path / "p.star", to_star(open_particles(source)))
    original, back = read_star(source), read_star(tmp_path / "p.star")
    np.testing.assert_array_equal(original["particles"]["rlnOpticsGroup"],
                                  back["particles"]["rlnOpticsGroup"])
    names = "rlnOpticsGroupName"
    assert original["optics"][names].tolist() == back["optics"][names].tolist()
    np.testing.assert_allclose(open_particles(tmp_path / "p.star").particles["pixel_size"],
                               open_particles(source).particles["pixel_size"])
