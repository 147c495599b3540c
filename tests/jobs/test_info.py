"""``csplugin info`` as the pre-flight check: every stack header, size and index checked, every
problem listed, exit status 2 when anything is wrong (real RELION 3.1 file and its stack,
damaged in tmp_path the ways stacks get damaged)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import RunCli

from csplugin.jobs.info import inspect


@pytest.fixture
def project(real: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """relion31.star with its 5 particles spread over four copies of relion31.mrcs."""
    monkeypatch.chdir(tmp_path)
    text = (real / "cryodrgn/relion31.star").read_text()
    for i, stack in enumerate(("a", "b", "c", "d", "d"), start=1):
        text = text.replace(f"00000{i}@relion31.mrcs", f"00000{i}@{stack}.mrcs")
    (tmp_path / "particles.star").write_text(text)
    for stack in "abcd":
        shutil.copy(real / "cryodrgn/relion31.mrcs", tmp_path / f"{stack}.mrcs")
    return tmp_path


def test_good_file_is_ready_exit_0(project: Path, run_cli: RunCli) -> None:
    code, out, err = run_cli("info", str(project / "particles.star"))
    assert code == 0, err
    assert "4 referenced, 4 readable, 0 with problems" in out
    assert "ready          yes" in out


def test_every_problem_is_listed_and_exit_is_2(project: Path,
                                               run_cli: RunCli) -> None:
    (project / "a.mrcs").unlink()                                   # missing
    data = (project / "b.mrcs").read_bytes()
    (project / "b.mrcs").write_bytes(data[:-1000])                  # truncated
    header = bytearray((project / "c.mrcs").read_bytes())
    header[12:16] = np.int32(99).tobytes()                          # corrupt header: mode 99
    (project / "c.mrcs").write_bytes(bytes(header))
    text = (project / "particles.star").read_text()                  # index past the end
    (project / "particles.star").write_text(text.replace("000005@d.mrcs", "000009@d.mrcs"))

    code, out, err = run_cli("info", str(project / "particles.star"))
    assert code == 2 and not err
    assert "4 referenced, 0 readable, 4 with problems" in out
    assert "missing:" in out and "a.mrcs: not found" in out
    assert "unreadable:" in out and "b.mrcs: is truncated" in out
    assert "c.mrcs: has MRC mode 99" in out
    assert "index past end:" in out and "holds 5 images but 1 particle(s) refer to images up " \
                                        "to 8 (0-based)" in out
    assert "ready          no" in out
    assert "0 missing" not in out


def test_box_mismatch_is_listed(project: Path) -> None:
    text = (project / "particles.star").read_text()
    (project / "particles.star").write_text(text.replace("          256            2",
                                                         "          128            2"))
    summary = inspect(project / "particles.star")
    assert not summary["ok"]
    assert {p["kind"] for p in summary["stack_problems"]} == {"box mismatch"}
    assert "holds 256x256 images, the metadata says 128 px" in summary["stack_problems"][0][
        "message"]


def test_json_lists_problems_for_scripts(project: Path, run_cli: RunCli) -> None:
    (project / "d.mrcs").unlink()
    code, out, _ = run_cli("info", "--json", str(project / "particles.star"))
    summary = json.loads(out)
    assert code == 2 and summary["ok"] is False
    assert summary["stack_problems"] == [{"stack": str(project / "d.mrcs"), "kind": "missing",
                                          "message": "not found", "particles": 2}]


def test_compressed_stack_is_listed_as_such(project: Path) -> None:
    import gzip

    (project / "a.mrcs").write_bytes(gzip.compress((project / "a.mrcs").read_bytes()))
    summary = inspect(project / "particles.star")
    [problem] = summary["stack_problems"]
    assert problem["kind"] == "unreadable" and "gzip-compressed" in problem["message"]


def test_a_job_refuses_what_info_lists(project: Path, run_cli: RunCli) -> None:
    """info and the jobs apply the same checks: what info lists, a job refuses in one line."""
    data = (project / "b.mrcs").read_bytes()
    (project / "b.mrcs").write_bytes(data[:-1000])
    code, out, _ = run_cli("info", str(project / "particles.star"))
    assert code == 2 and "b.mrcs: is truncated" in out
    code, _, err = run_cli("export-aligned", str(project / "particles.star"),
                           "-o", str(project / "out"))
    assert code == 2 and "b.mrcs: is truncated" in err and "Traceback" not in err


def test_tomography_file_is_described_not_refused(real: Path,
                                                  run_cli: RunCli) -> None:
    code, out, err = run_cli("info", str(real / "cryodrgn/sta_testing_bin8.star"))
    assert code == 2 and not err
    assert "Warp/M particle series (6 particles" in out
    assert "csplugin handles 2D single-particle images only" in out
    assert "data_: " in out and " rows; rlnMagnification" in out  # the block it holds


def test_tomography_json(real: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli("info", "--json",
                           str(real / "cylindra/Refine3D_run_it050_data.star"))
    summary = json.loads(out)
    assert code == 2 and summary["tomography"] is True and summary["ok"] is False
    assert "subtomogram particles" in summary["what"]


def test_non_square_header_variant_is_listed(project: Path) -> None:
    """relion31.mrcs with its header saying 128x512 (same byte count, so the size check
    passes): the box no longer matches the metadata's 256 px."""
    header = bytearray((project / "a.mrcs").read_bytes())
    header[0:8] = np.array([128, 512], np.int32).tobytes()
    (project / "a.mrcs").write_bytes(bytes(header))
    summary = inspect(project / "particles.star")
    [problem] = summary["stack_problems"]
    assert problem["kind"] == "box mismatch"
    assert "holds 128x512 images, the metadata says 256 px" in problem["message"]
