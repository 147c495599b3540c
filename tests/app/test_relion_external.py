"""RELION External job: invoked as RELION invokes it, and through relion_pipeliner itself."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from csplugin.app import relion_external as rx
from csplugin.core.particles import open_particles
from csplugin.jobs.export_aligned import export_aligned
from csplugin.synthetic import SyntheticJob
from formats import InputError
from formats.mrc import open_stack
from formats.star import read_star

EXIT_FILES = {rx.SUCCESS, rx.FAILURE, rx.ABORTED}


@pytest.fixture
def project(job: SyntheticJob, tmp_path: Path) -> Path:
    """A RELION-like project directory: particles.star with project-relative stack paths."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "J2").symlink_to(job.project / "J2")
    shutil.copy(job.particles_star, root / "particles.star")
    return root


def _external(project: Path, job_dir: str, *args: str) -> subprocess.CompletedProcess:
    """Run the entry point exactly as RELION's External job does: from the project."""
    return subprocess.run([sys.executable, "-m", "csplugin.app.relion_external", "--o", job_dir,
                           "--in_parts", "particles.star", *args], cwd=project,
                          capture_output=True, text=True)


def _nodes(job_dir: Path) -> list[tuple[str, int]]:
    table = read_star(job_dir / rx.NODES_FILE)["output_nodes"]
    return list(zip(table["rlnPipeLineNodeName"], table["rlnPipeLineNodeType"].astype(int)))


def _stack(paths: list[Path]) -> np.ndarray:
    return np.concatenate([open_stack(p).read(range(open_stack(p).n)) for p in paths])


def test_options_map_relion_params_onto_the_commands_options() -> None:
    assert rx.command_options("power-spectrum", [
        "--mask", "No", "--psi_bin", "2", "--power", "no", "--log", "Yes", "axis", "vertical",
    ]) == ["--no-mask", "--psi-bin", "2", "--amplitude", "--log", "--axis", "vertical"]
    assert rx.command_options("export-aligned", ["--float16", "No", "--float16", "yes"]) == \
        ["--float16"]
    for bad, text in ((["--nonsense", "1"], "has no option --nonsense"),
                      (["--mask", "maybe"], "takes Yes or No"),
                      (["--outdir", "x"], "set by RELION"),
                      (["--classes"], "needs a value")):
        with pytest.raises(InputError, match=text):
            rx.command_options("power-spectrum" if "mask" in bad[0] else "class-averages", bad)
    call = rx.parse_arguments(["--o", "External/job004/", "--in_parts", "a.star", "--j", "3",
                               "--job", "class-averages", "--stacker", "median", "--continue",
                               "--pipeline_control", "External/job004/"])
    assert (call.job_dir, call.in_parts, call.threads, call.options) == \
        ("External/job004/", "a.star", 3, ["--stacker", "median"])
    with pytest.raises(InputError, match="only input particles"):
        rx.parse_arguments(["--o", "E/", "--in_parts", "a.star", "--job", "export-aligned",
                            "--in_mics", "m.star"])
    with pytest.raises(InputError, match="no --job"):
        rx.parse_arguments(["--o", "E/", "--in_parts", "a.star"])


def test_export_job_writes_outputs_nodes_and_success_last(project: Path, job: SyntheticJob
                                                          ) -> None:
    done = _external(project, "External/job001/", "--j", "2", "--job", "export-aligned",
                     "--classes", "1,3", "--interpolation", "linear",
                     "--particles_per_stack", "16")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # RELION shows run.err as errors; progress goes to run.out
    out = project / "External" / "job001"
    assert (out / rx.SUCCESS).stat().st_size == 0
    assert not (out / rx.FAILURE).exists()
    assert _nodes(out) == [("External/job001/particles.star", rx.NODE_PART_DATA)]
    # the success marker is written after every output (RELION then reads the node list)
    assert (out / rx.SUCCESS).stat().st_mtime_ns >= max(
        p.stat().st_mtime_ns for p in out.iterdir() if p.name != rx.SUCCESS)
    # the job's own options arrived: linear interpolation, classes 1 and 3, 16 per stack
    table = open_particles(job.particles_star).select_classes([1, 3])
    expected = export_aligned(table, project / "reference", interpolation="linear",
                              particles_per_stack=16)
    stacks = sorted(out.glob("particles_aligned_*.mrcs"))
    assert len(stacks) == len(expected.stacks) == 5
    np.testing.assert_array_equal(_stack(stacks), _stack(expected.stacks))
    names = read_star(out / "particles.star")["particles"]["rlnImageName"]
    assert names.str.contains("@External/job001/particles_aligned_0000.mrcs").any()


def test_class_averages_and_spectra_jobs_list_2d_reference_nodes(project: Path) -> None:
    done = _external(project, "External/job002/", "--job", "class-averages", "--stacker",
                     "median")
    assert done.returncode == 0, done.stderr
    out = project / "External" / "job002"
    assert _nodes(out) == [("External/job002/class_averages.star", rx.NODE_2DREFS)]
    refs = read_star(out / "class_averages.star")["model_classes"]["rlnReferenceImage"]
    assert list(refs) == [f"00000{k}@External/job002/class_averages.mrcs" for k in (1, 2, 3)]

    done = _external(project, "External/job003/", "--job", "power-spectrum", "--mask", "No",
                     "--psi_bin", "2")
    assert done.returncode == 0, done.stderr
    out = project / "External" / "job003"
    assert _nodes(out) == [("External/job003/power_spectra.star", rx.NODE_2DREFS)]
    listed = read_star(out / "power_spectra.star")[""]
    assert sorted(listed["rlnImageName"]) == sorted(
        f"External/job003/{p.name}" for p in out.glob("ps_*.mrc"))
    assert len(listed) == 5  # three classes, pooled, camera frame
    assert '"mask": false' in (out / "summary.json").read_text()


def test_user_error_writes_failure_a_message_and_no_outputs(project: Path) -> None:
    for args, text in ((["--job", "class-averages", "--weights", "posterior"],
                        "has no class posterior"),
                       (["--job", "class-averages", "--bogus", "1"], "has no option --bogus"),
                       (["--job", "export-aligned", "--particles_per_stack", "many"],
                        "--particles-per-stack"),
                       (["--job", "stack-everything"], "unknown --job")):
        done = _external(project, "External/job009/", *args)
        out = project / "External" / "job009"
        assert done.returncode == 2, done.stderr
        assert text in done.stderr and "Traceback" not in done.stderr
        assert {p.name for p in out.iterdir()} == {rx.FAILURE}  # nothing else, no nodes
    # a re-run that succeeds replaces the failure marker
    done = _external(project, "External/job009/", "--job", "class-averages")
    assert done.returncode == 0
    assert not (out / rx.FAILURE).exists() and (out / rx.SUCCESS).exists()


def test_abort_now_stops_the_job_and_leaves_no_partial_outputs(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csplugin.jobs.export_aligned as export_module

    out = project / "External" / "job005"
    real_align = export_module.align_images

    def slow_align(*args, **kwargs):  # the GUI's Abort button, pressed during the run
        (out / rx.ABORT_NOW).touch()
        time.sleep(0.3)
        return real_align(*args, **kwargs)

    monkeypatch.setattr(export_module, "align_images", slow_align)
    monkeypatch.setattr(rx, "ABORT_POLL", 0.01)
    monkeypatch.chdir(project)
    status = rx.main(["--o", "External/job005/", "--in_parts", "particles.star",
                      "--job", "export-aligned", "--particles_per_stack", "7"])
    assert status == 3
    assert {p.name for p in out.iterdir()} == {rx.ABORTED}


@pytest.mark.skipif(shutil.which("relion_pipeliner") is None,
                    reason="relion_pipeliner absent (part of RELION)")
@pytest.mark.relion
def test_relion_pipeliner_runs_the_job_and_downstream_relion_reads_its_nodes(
        project: Path, tmp_path: Path) -> None:
    exe = tmp_path / "csplugin_relion_external"  # External's executable field takes one path
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m csplugin.app.relion_external "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    (project / "default_pipeline.star").write_text(
        "# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n\n")

    def pipeliner(*args: str) -> None:
        done = subprocess.run(["relion_pipeliner", *args], cwd=project, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr

    jobs = {"External/job001/": "param1_label == job;param1_value == export-aligned;"
                                "param2_label == interpolation;param2_value == linear",
            "External/job002/": "param1_label == job;param1_value == class-averages",
            "External/job003/": "param1_label == job;param1_value == class-averages;"
                                "param2_label == weights;param2_value == posterior"}
    for options in jobs.values():  # RELION splits options on ';' and keeps spaces after it
        pipeliner("--addJob", "External", "--addJobOptions",
                  f"fn_exe == {exe};in_part == particles.star;nr_threads == 2;{options}")
    for name in jobs:  # one at a time: the scheduler stops at a failed job
        pipeliner("--RunJobs", name, "--sec_wait_after", "0")

    blocks = read_star(project / "default_pipeline.star")
    status = dict(zip(blocks["pipeline_processes"]["rlnPipeLineProcessName"],
                      blocks["pipeline_processes"]["rlnPipeLineProcessStatus"]))
    assert status == {"External/job001/": 2, "External/job002/": 2, "External/job003/": 3}
    nodes = dict(zip(blocks["pipeline_nodes"]["rlnPipeLineNodeName"],
                     blocks["pipeline_nodes"]["rlnPipeLineNodeType"]))
    assert nodes["External/job001/particles.star"] == rx.NODE_PART_DATA
    assert nodes["External/job002/class_averages.star"] == rx.NODE_2DREFS
    assert not any(name.startswith("External/job003/") for name in nodes)
    edges = blocks["pipeline_output_edges"]
    assert set(zip(edges["rlnPipeLineEdgeProcess"], edges["rlnPipeLineEdgeToNode"])) == {
        ("External/job001/", "External/job001/particles.star"),
        ("External/job002/", "External/job002/class_averages.star")}
    assert (project / ".Nodes" / "3" / "External" / "job001" / "particles.star").exists()
    assert "has no class posterior" in (project / "External/job003/run.err").read_text()
    assert "--in_parts particles.star" in (project / "External/job001/note.txt").read_text()

    # downstream RELION programs take the nodes as they are
    done = subprocess.run(["relion_stack_create", "--i", "External/job001/particles.star",
                           "--o", "restack"], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    restacked = open_stack(project / "restack.mrcs")
    originals = sorted((project / "External/job001").glob("particles_aligned_*.mrcs"))
    np.testing.assert_array_equal(restacked.read(range(restacked.n)), _stack(originals))
    _write_micrograph(project)
    done = subprocess.run(["relion_autopick", "--i", "mics.star", "--odir", "AutoPick/job004/",
                           "--pickname", "autopick", "--ref", "External/job002/class_averages.star",
                           "--angpix_ref", "1.5", "--particle_diameter", "40", "--shrink", "1",
                           "--lowpass", "20", "--ang", "30"],
                          cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr  # (1 if a reference is unreadable)
    assert "Total number of particles" in done.stdout
    assert (project / "AutoPick/job004/Mics/mic1_autopick.star").is_file()


def _write_micrograph(project: Path) -> None:
    """A noise micrograph and its RELION 3.1 micrographs.star, for AutoPick."""
    import mrcfile

    from formats.star import write_star

    (project / "Mics").mkdir()
    noise = np.random.default_rng(0).normal(0, 1, (256, 256)).astype(np.float32)
    mrcfile.write(project / "Mics" / "mic1.mrc", noise, voxel_size=1.5)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnMicrographPixelSize": [1.5], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    write_star(project / "mics.star", {"optics": optics, "micrographs": pd.DataFrame(
        {"rlnMicrographName": ["Mics/mic1.mrc"], "rlnOpticsGroup": [1]})})
