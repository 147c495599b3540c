"""Every file in fixtures/real through ``info``, ``convert`` (both ways) and, for particle
stacks, an identity export; each file's expected outcome is written in fixtures/real/EXPECTED.tsv.

Columns of EXPECTED.tsv (tab-separated, one row per file, path relative to fixtures/real):

``info``
    ``ok`` (exit status 0: every referenced image can be read) or ``2:<text>``: exit status 2
    and ``<text>`` in what it prints (a description, a listed stack problem or the one-line
    error).
``convert``
    ``ok`` when ``csplugin convert`` to the other format (``.cs`` <-> ``.star``) succeeds, then
    converting the result back must give the same particles (indices, stacks, pixel sizes,
    angles, shifts, classes); ``2:<text>`` for a one-line refusal; ``-`` for files that are
    not particle metadata (then ``convert`` must refuse them too, with the ``info`` reason).
``export``
    ``identity`` for a particle stack: exported with psi 0 and shift 0 it must come back
    exactly (``linear``) and within 1e-6 (``cubic``); ``-`` otherwise.

A new file in fixtures/real without a row fails the test: write down what it should do.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import RunCli

from csplugin.core.particles import open_particles
from csplugin.jobs.export_aligned import export_aligned
from formats.mrc import open_stack
from formats.star import write_star

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
DATA_SUFFIXES = {".cs", ".star", ".mrc", ".mrcs"}


def _expected() -> dict[str, dict[str, str]]:
    with open(REAL / "EXPECTED.tsv", newline="") as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        return {row["file"]: row for row in rows}


EXPECTED = _expected()
FILES = sorted(str(p.relative_to(REAL)) for p in REAL.rglob("*") if p.suffix in DATA_SUFFIXES)



def _check(outcome: str, code: int, out: str, err: str) -> None:
    """Compare a command's exit status and output with an EXPECTED.tsv cell."""
    assert "Traceback" not in err, err
    if outcome == "ok":
        assert code == 0, err or out
        return
    status, _, text = outcome.partition(":")
    assert code == int(status), (code, err or out)
    assert text in out + err, (text, err or out)
    if err:
        assert len(err.strip().splitlines()) == 1, err


def test_every_file_has_an_expected_outcome() -> None:
    assert sorted(EXPECTED) == FILES, "add a row to fixtures/real/EXPECTED.tsv for each file"


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from an empty directory: .star stack paths try the current directory first."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("name", FILES)
def test_info(name: str, run_cli: RunCli) -> None:
    code, out, err = run_cli("info", str(REAL / name))
    _check(EXPECTED[name]["info"], code, out, err)


@pytest.mark.parametrize("name", FILES)
def test_convert_both_ways(name: str, tmp_path: Path, run_cli: RunCli) -> None:
    expected = EXPECTED[name]["convert"]
    source = REAL / name
    other = ".star" if source.suffix == ".cs" else ".cs"
    there = tmp_path / f"converted{other}"
    code, out, err = run_cli("convert", str(source), "-o", str(there))
    if expected == "-":  # not particle metadata: refused as info describes it
        reason = EXPECTED[name]["info"].partition(":")[2]
        _check(f"2:{reason}", code, out, err)
        return
    _check(expected, code, out, err)
    if expected != "ok":
        assert not there.exists()
        return
    back = tmp_path / f"back{source.suffix}"
    code, out, err = run_cli("convert", str(there), "-o", str(back))
    _check("ok", code, out, err)
    _same_particles(open_particles(source), open_particles(back, project_dir=source.parent))


def _same_particles(a, b) -> None:
    p, q = a.particles, b.particles
    assert len(p) == len(q)
    assert (p["stack_index"].to_numpy() == q["stack_index"].to_numpy()).all()
    assert [Path(s).name for s in p["stack"]] == [Path(s).name for s in q["stack"]]
    for column in ("pixel_size", "angle", "shift_x", "shift_y"):
        np.testing.assert_allclose(q[column], p[column], rtol=1e-6, atol=1e-5, err_msg=column)
    assert (p["class_index"].to_numpy() == q["class_index"].to_numpy()).all()


STACKS = [name for name in FILES if EXPECTED.get(name, {}).get("export") == "identity"]


@pytest.mark.parametrize("name", STACKS)
def test_identity_export_returns_the_stack(name: str, tmp_path: Path) -> None:
    """psi 0, shift 0: ``linear`` must return every image exactly, ``cubic`` within 1e-6 of
    the stack's largest magnitude (float32 rounding of the B-spline prefilter: 2.2e-7 on
    both real stacks)."""
    stack = open_stack(REAL / name)
    images = stack.read(np.arange(stack.n))
    shutil.copy(REAL / name, tmp_path / "stack.mrcs")
    n = stack.n
    star = tmp_path / "identity.star"
    write_star(star, {
        "optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                                "rlnImagePixelSize": [1.0], "rlnImageSize": [stack.box[1]],
                                "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
                                "rlnSphericalAberration": [2.7],
                                "rlnAmplitudeContrast": [0.1]}),
        "particles": pd.DataFrame({
            "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
            "rlnAnglePsi": np.zeros(n), "rlnOriginXAngst": np.zeros(n),
            "rlnOriginYAngst": np.zeros(n), "rlnOpticsGroup": np.ones(n, int)}),
    })
    table = open_particles(star, project_dir=tmp_path)
    for interpolation, atol in (("linear", 0.0), ("cubic", 1e-6)):
        outdir = tmp_path / interpolation
        export_aligned(table, outdir, interpolation=interpolation)
        exported = open_particles(outdir / "particles.star")
        got = exported.images[:]
        scale = max(float(np.abs(images).max()), 1.0)
        if atol == 0.0:
            np.testing.assert_array_equal(got, images)
        else:
            np.testing.assert_allclose(got, images, rtol=0, atol=atol * scale)
