"""3D alignments through ``convert``: cryoSPARC ``alignments3D/pose`` (rotation vector) <->
RELION ``rlnAngleRot/Tilt/Psi``, checked on real files against pyem's csparc2star conventions.

The reference here is written from pyem's documented conventions, independently of
csplugin and of scipy: pyem (``pyem/metadata/cryosparc2.py``) converts ``alignments3D/pose``
with ``rot2euler(expmap(pose))``, where ``expmap`` (``pyem/geom/convert_numba.py``) is
Rodrigues' formula built on the skew matrix ``K = [[0, w2, -w1], [-w2, 0, w0], [w1, -w0, 0]]``
(the transpose of the usual cross-product matrix, so it yields ``R(r)^T``), and ``rot2euler``
inverts RELION's ``Euler_angles2matrix`` (``src/euler.cpp``), written out below. So the
RELION matrix of the written angles must equal ``expmap_pyem(pose)``. Matrices are compared,
not angles (Euler angles are not unique). Shifts: pyem copies ``alignments3D/shift`` (px) to
``rlnOriginX/Y``; RELION 3.1 stores Å = px × pixel size.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import starfile

from csplugin.core import conventions as cv
from csplugin.core.native import save_particles, to_cs, to_star
from csplugin.core.particles import open_particles
from formats.cs import read_cs, write_cs

REAL_3D = "cryodrgn/cryosparc_P12_J24_001_particles.cs"  # cryoSPARC 3D refinement, 2019 rows


def expmap_pyem(rotvec: np.ndarray) -> np.ndarray:
    """pyem's ``geom.expmap``: ``I + sin θ K + (1 - cos θ) K²`` with pyem's K (= R(r)^T)."""
    out = np.empty((len(rotvec), 3, 3))
    for i, e in enumerate(np.asarray(rotvec, np.float64)):
        theta = np.linalg.norm(e)
        if theta < 1e-16:
            out[i] = np.eye(3)
            continue
        w = e / theta
        k = np.array([[0.0, w[2], -w[1]], [-w[2], 0.0, w[0]], [w[1], -w[0], 0.0]])
        out[i] = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)
    return out


def euler2rot_relion(euler_deg: np.ndarray) -> np.ndarray:
    """RELION's ``Euler_angles2matrix(rot, tilt, psi)`` (as in pyem's ``euler2rot``)."""
    a, b, g = np.deg2rad(np.asarray(euler_deg, np.float64)).T
    ca, cb, cg, sa, sb, sg = np.cos(a), np.cos(b), np.cos(g), np.sin(a), np.sin(b), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([
        np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], axis=-1),
        np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], axis=-1),
        np.stack([sc, ss, cb], axis=-1)], axis=-2)


def test_reference_is_not_symmetric_so_a_transpose_error_shows(real: Path) -> None:
    pose = read_cs(real / REAL_3D)["alignments3D/pose"]
    r = expmap_pyem(pose)
    assert np.abs(r - r.transpose(0, 2, 1)).max() > 1.0  # R != R^T on the real poses


def test_rotvec_to_euler_matches_pyem_on_the_real_3d_file(real: Path) -> None:
    pose = read_cs(real / REAL_3D)["alignments3D/pose"]
    euler = cv.rotvec_to_relion_euler(pose)
    np.testing.assert_allclose(euler2rot_relion(euler), expmap_pyem(pose), atol=2e-6)
    assert (euler[:, 1] >= 0).all() and (euler[:, 1] <= 180).all()
    # and the inverse returns the same rotation
    back = cv.relion_euler_to_rotvec(euler)
    np.testing.assert_allclose(expmap_pyem(back), expmap_pyem(pose), atol=2e-6)


@pytest.mark.parametrize("rotvec", [
    [0.0, 0.0, 0.7], [0.0, 0.0, -2.5], [np.pi, 0.0, 0.0], [0.0, np.pi, 0.0],
    [np.pi / np.sqrt(2), np.pi / np.sqrt(2), 0.0], [0.0, 0.0, 0.0], [1e-9, 0.0, 0.0]])
def test_gimbal_lock_poses_keep_their_matrix(rotvec: list[float]) -> None:
    euler = cv.rotvec_to_relion_euler(np.array([rotvec]))
    np.testing.assert_allclose(euler2rot_relion(euler), expmap_pyem(np.array([rotvec])),
                               atol=1e-9)
    np.testing.assert_allclose(cv.relion_euler_matrix(euler), expmap_pyem(np.array([rotvec])),
                               atol=1e-9)


def test_in_plane_pose_is_the_2d_convention() -> None:
    """r = (0, 0, θ) is an in-plane rotation: psi = +degrees(θ), as for alignments2D/pose."""
    euler = cv.rotvec_to_relion_euler(np.array([[0.0, 0.0, 0.7]]))
    np.testing.assert_allclose(euler, [[0.0, 0.0, np.rad2deg(0.7)]], atol=1e-9)


def test_cs_to_star_writes_pyem_poses_shifts_classes_and_half_sets(real: Path,
                                                                   tmp_path: Path) -> None:
    data = read_cs(real / REAL_3D)
    save_particles(open_particles(real / REAL_3D), tmp_path / "p.star")
    particles = starfile.read(tmp_path / "p.star", always_dict=True)["particles"]
    euler = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(euler2rot_relion(euler), expmap_pyem(data["alignments3D/pose"]),
                               atol=1e-6)
    psize = data["blob/psize_A"].astype(np.float64)  # = alignments3D/psize_A in this file
    shift_px = data["alignments3D/shift"].astype(np.float64)
    np.testing.assert_allclose(particles["rlnOriginXAngst"], shift_px[:, 0] * psize, atol=1e-6)
    np.testing.assert_allclose(particles["rlnOriginYAngst"], shift_px[:, 1] * psize, atol=1e-6)
    np.testing.assert_array_equal(particles["rlnClassNumber"], data["alignments3D/class"] + 1)
    np.testing.assert_array_equal(particles["rlnRandomSubset"], data["alignments3D/split"] + 1)
    assert set(np.unique(particles["rlnRandomSubset"])) == {1, 2}
    np.testing.assert_array_equal(particles["rlnCsPluginUid"].to_numpy(np.uint64), data["uid"])
    np.testing.assert_array_equal(
        particles["rlnImageName"].str.split("@").str[0].astype(int), data["blob/idx"] + 1)


def test_3d_shift_is_rescaled_from_the_alignment_pixel_size(real: Path, tmp_path: Path) -> None:
    """alignments3D/shift is in pixels of alignments3D/psize_A (here 2x the particle's)."""
    data = read_cs(real / REAL_3D)[:50].copy()
    data["alignments3D/psize_A"] *= 2
    write_cs(tmp_path / "binned.cs", data)
    star = to_star(open_particles(tmp_path / "binned.cs"))["particles"]
    expected = data["alignments3D/shift"][:, 0].astype(np.float64) * 2 * data["blob/psize_A"]
    np.testing.assert_allclose(star["rlnOriginXAngst"], expected, rtol=1e-6)


def test_3d_cs_star_cs_keeps_every_pose_and_writes_no_2d_alignment(real: Path,
                                                                   tmp_path: Path) -> None:
    data = read_cs(real / REAL_3D)
    save_particles(open_particles(real / REAL_3D), tmp_path / "p.star")
    back = to_cs(open_particles(tmp_path / "p.star"))
    assert not [f for f in back.dtype.names if f.startswith("alignments2D/")]
    np.testing.assert_allclose(expmap_pyem(back["alignments3D/pose"]),
                               expmap_pyem(data["alignments3D/pose"]), atol=2e-6)
    np.testing.assert_allclose(back["alignments3D/shift"], data["alignments3D/shift"], atol=1e-5)
    np.testing.assert_array_equal(back["alignments3D/class"], data["alignments3D/class"])
    np.testing.assert_array_equal(back["alignments3D/split"], data["alignments3D/split"])
    np.testing.assert_array_equal(back["uid"], data["uid"])
    np.testing.assert_array_equal(back["blob/idx"], data["blob/idx"])
    for field in ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A"):
        np.testing.assert_array_equal(back[field], data[field], err_msg=field)


def test_real_relion_3d_star_to_cs_is_the_inverse_of_pyem(real: Path) -> None:
    """RELION 3.1 refinement angles -> rotation vectors whose pyem matrix is RELION's."""
    source = real / "cryodrgn/relion31.star"
    particles = starfile.read(source, always_dict=True)["particles"]
    out = to_cs(open_particles(source))
    euler = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(expmap_pyem(out["alignments3D/pose"]), euler2rot_relion(euler),
                               atol=2e-6)
    np.testing.assert_allclose(out["alignments3D/shift"] * out["alignments3D/psize_A"][:, None],
                               particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(),
                               atol=1e-4)
    np.testing.assert_array_equal(out["alignments3D/class"], particles["rlnClassNumber"] - 1)
    np.testing.assert_array_equal(out["alignments3D/split"], particles["rlnRandomSubset"] - 1)
    assert "alignments2D/pose" not in out.dtype.names  # a refinement's psi is not in-plane


@pytest.mark.relion
def test_relion_reads_the_3d_star_and_keeps_the_angles(real: Path, tmp_path: Path) -> None:
    save_particles(open_particles(real / REAL_3D), tmp_path / "p.star")
    done = subprocess.run(["relion_star_handler", "--i", str(tmp_path / "p.star"), "--o",
                           str(tmp_path / "r.star")], capture_output=True, text=True,
                          check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    ours = starfile.read(tmp_path / "p.star", always_dict=True)["particles"]
    theirs = starfile.read(tmp_path / "r.star", always_dict=True)["particles"]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                  "rlnClassNumber", "rlnRandomSubset"):
        np.testing.assert_allclose(theirs[label], ours[label], atol=1e-5, err_msg=label)
    np.testing.assert_array_equal(theirs["rlnCsPluginUid"].to_numpy(np.uint64),
                                  ours["rlnCsPluginUid"].to_numpy(np.uint64))


def test_cs_with_2d_and_3d_alignments_gives_the_2d_one_to_star_and_says_so(
        real: Path, tmp_path: Path) -> None:
    from numpy.lib import recfunctions as rfn

    from csplugin.core.native import notes

    two_d = read_cs(real / "cryodrgn/cryosparc_J2_particles_exported.cs")
    three_d = read_cs(real / REAL_3D)[:len(two_d)]
    names = [n for n in three_d.dtype.names if n.startswith("alignments3D/")]
    both = rfn.merge_arrays([two_d, three_d[names]], flatten=True, usemask=False)
    write_cs(tmp_path / "both.cs", both)
    table = open_particles(tmp_path / "both.cs")
    star = to_star(table)["particles"]
    assert "rlnAngleRot" not in star and "rlnAngleTilt" not in star
    np.testing.assert_allclose(star["rlnAnglePsi"], np.rad2deg(two_d["alignments2D/pose"]),
                               atol=1e-4)
    assert any("alignments3D is not written" in note for note in notes(table, ".star"))
    out = to_cs(table)  # a .cs keeps both
    np.testing.assert_array_equal(out["alignments3D/pose"], three_d["alignments3D/pose"])
    np.testing.assert_array_equal(out["alignments2D/pose"], two_d["alignments2D/pose"])


def test_zero_rot_and_tilt_columns_are_a_2d_alignment(real: Path, tmp_path: Path) -> None:
    blocks = starfile.read(real / "cryodrgn/relion31.star", always_dict=True)
    blocks["particles"]["rlnAngleRot"] = 0.0
    blocks["particles"]["rlnAngleTilt"] = 0.0
    starfile.write(blocks, tmp_path / "flat.star")
    out = to_cs(open_particles(tmp_path / "flat.star"))
    assert not [n for n in out.dtype.names if n.startswith("alignments3D/")]
    np.testing.assert_allclose(np.rad2deg(out["alignments2D/pose"]),
                               blocks["particles"]["rlnAnglePsi"], atol=1e-4)
