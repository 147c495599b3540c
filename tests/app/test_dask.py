"""Dask execution: the same results as the local run, killed workers, failed tasks, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from csplugin.core.particles import open_particles
from csplugin.jobs.class_averages import class_averages
from csplugin.jobs.export_aligned import export_aligned
from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra, psi_blocks
from csplugin.jobs.runners import SerialRunner
from csplugin.synthetic import SyntheticJob, make_job
from formats import InputError
from formats.cs import encode, write_cs
from formats.mrc import StackWriter

pytest.importorskip("distributed")
from csplugin.app.dask import DaskRunner, connect  # noqa: E402


@pytest.fixture(scope="module")
def runner() -> Iterator[DaskRunner]:
    """A real local cluster of two worker processes."""
    with connect(workers=2) as dask_runner:
        assert dask_runner is not None
        yield dask_runner


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> SyntheticJob:
    """3 classes x 60 particles with noise (so every float sum matters), box 48."""
    return make_job(tmp_path_factory.mktemp("noisy"), n_per_class=60, box=48, noise_sigma=0.5)


def _files(directory: Path) -> dict[str, bytes]:
    """File name -> bytes; for MRC files without the header's text labels (mrcfile writes
    its creation time there), i.e. every header field and every pixel."""
    return {p.name: _unlabelled(p) for p in sorted(directory.iterdir())
            if not p.name.startswith(".csplugin")}  # not the manifest (times, pids)


def _unlabelled(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:220] + data[1024:] if path.suffix in (".mrc", ".mrcs") else data


def test_export_on_dask_equals_the_local_run_bit_for_bit(noisy: SyntheticJob,
                                                         runner: DaskRunner,
                                                         tmp_path: Path) -> None:
    table = open_particles(noisy.particles_cs)
    local = export_aligned(table, tmp_path / "local", particles_per_stack=40)
    calls: list[int] = []
    dask = export_aligned(table, tmp_path / "dask", particles_per_stack=40, runner=runner,
                          progress=calls.append)
    a, b = _files(tmp_path / "local"), _files(tmp_path / "dask")
    assert a.keys() == b.keys() and len(local.stacks) == len(dask.stacks) == 5
    for name in a:  # stacks (data and header statistics) and particles.cs: identical bytes
        if name != "particles.star":
            assert a[name] == b[name], name
    star = b["particles.star"].replace(str(tmp_path / "dask").encode(),
                                       str(tmp_path / "local").encode())
    assert star == a["particles.star"]  # only the directory differs
    assert sorted(calls) == [20, 40, 40, 40, 40]  # every particle reported once


def test_class_averages_on_dask_equal_the_local_run_bit_for_bit(noisy: SyntheticJob,
                                                                runner: DaskRunner,
                                                                tmp_path: Path) -> None:
    table = open_particles(noisy.particles_cs)
    for options in ({"stacker": "median"}, {"ctf": "wiener", "weights": "posterior"},
                    {"stacker": "mean", "ctf": "phase-flip"}):
        name = "-".join(options.values())
        local = class_averages(table, tmp_path / f"l{name}", **options)
        dask = class_averages(table, tmp_path / f"d{name}", runner=runner, **options)
        np.testing.assert_array_equal(local.averages, dask.averages)
        assert _unlabelled(tmp_path / f"l{name}/class_averages.mrcs") == \
            _unlabelled(tmp_path / f"d{name}/class_averages.mrcs")
        if local.snr is not None:
            np.testing.assert_array_equal(local.snr, dask.snr)
    assert len(table) == 180


@pytest.mark.parametrize("axis", ["class", "vertical"])
def test_spectra_on_dask_equal_the_local_run_within_summation_order(
        noisy: SyntheticJob, runner: DaskRunner, tmp_path: Path, axis: str) -> None:
    table = open_particles(noisy.particles_cs)
    options = SpectrumOptions(axis=axis, psi_bin_deg=2)  # type: ignore[arg-type]
    local = power_spectra(table, tmp_path / "local", options)
    calls: list[int] = []
    dask = power_spectra(table, tmp_path / "dask", options, runner=runner, block_particles=15,
                         progress=calls.append)
    assert sum(calls) == len(table) and len(calls) >= 9  # several blocks per class
    assert dask.axis_angles_deg == local.axis_angles_deg
    names = sorted(p.name for p in (tmp_path / "local").glob("*.mrc"))
    assert names == sorted(p.name for p in (tmp_path / "dask").glob("*.mrc")) and len(names) == 5
    for name in names:
        a, b = mrcfile.read(tmp_path / "local" / name), mrcfile.read(tmp_path / "dask" / name)
        assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max(), name  # float32 sums' order


def test_psi_blocks_and_serial_blocks() -> None:
    bins = np.array([5, 1, 1, 7, 5, 5, 0, 1, 7, 2])
    blocks = psi_blocks(bins, 3)
    assert sorted(np.concatenate(blocks).tolist()) == list(range(len(bins)))
    seen: set[int] = set()
    for block in blocks:  # whole bins, contiguous ranges, ascending positions
        mine = set(bins[block].tolist())
        assert not mine & seen and np.all(np.diff(block) > 0)
        seen |= mine
    assert [sorted(set(bins[b].tolist())) for b in blocks] == [[0, 1], [2, 5], [7]]


def test_spectra_blocks_run_serially_give_the_same_bins(job: SyntheticJob,
                                                        tmp_path: Path) -> None:
    table = open_particles(job.particles_cs)
    options = SpectrumOptions(psi_bin_deg=1)
    local = power_spectra(table, tmp_path / "a", options)
    blocks = power_spectra(table, tmp_path / "b", options, runner=SerialRunner(),
                           block_particles=4)
    assert blocks.classes == local.classes
    for name in ("ps_all.mrc", "ps_class1.mrc", "ps_camera_frame.mrc"):
        a, b = mrcfile.read(tmp_path / "a" / name), mrcfile.read(tmp_path / "b" / name)
        assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max(), name


def _noise_job(root: Path, n: int, box: int, per_stack: int = 400) -> Path:
    """Noise particles with random poses (cheap to make, real work to align): the .cs path."""
    rng = np.random.default_rng(1)
    paths, index = [], []
    for k, first in enumerate(range(0, n, per_stack)):
        count = min(per_stack, n - first)
        path = root / f"stack{k}.mrcs"
        with StackWriter(path, count, box, 1.0) as writer:
            writer.write(rng.standard_normal((count, box, box), dtype=np.float32))
        paths += [path.name] * count
        index += range(count)
    data = np.zeros(n, dtype=[("uid", "<u8"), ("blob/path", "S16"), ("blob/idx", "<u4"),
                              ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
                              ("alignments2D/shift", "<f4", (2,)), ("alignments2D/pose", "<f4"),
                              ("alignments2D/class", "<u4")])
    data["uid"], data["blob/path"], data["blob/idx"] = np.arange(n), encode(paths), index
    data["blob/shape"], data["blob/psize_A"] = box, 1.0
    data["alignments2D/shift"] = rng.uniform(-3, 3, (n, 2))
    data["alignments2D/pose"] = rng.uniform(0, 2 * np.pi, n)
    write_cs(root / "particles.cs", data)
    return root / "particles.cs"


def test_killed_workers_are_replaced_and_the_outputs_stay_whole(tmp_path: Path) -> None:
    source = _noise_job(tmp_path, n=1600, box=128)
    table = open_particles(source, project_dir=tmp_path)
    optics = {"voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.1}  # the .cs has no ctf/
    local = export_aligned(table, tmp_path / "local", particles_per_stack=200, **optics)
    out = tmp_path / "dask"
    with connect(workers=2) as dask_runner:
        assert dask_runner is not None
        client = dask_runner.client
        before = set(client.run(os.getpid).values())
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["result"] = export_aligned(table, out, particles_per_stack=200,
                                                   runner=dask_runner, **optics)
            except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 60
        staging = ".dask.csplugin-new-*/"  # the job writes beside OUTDIR, then swaps
        while not list(tmp_path.glob(staging + ".particles_aligned_*.part")) \
                and time.monotonic() < deadline:
            time.sleep(0.002)
        writing = list(tmp_path.glob(staging + ".particles_aligned_*.part"))
        finished_before = len(list(tmp_path.glob(staging + "particles_aligned_*.mrcs")))
        for pid in before:  # kill every worker in the middle of writing its stack
            os.kill(pid, signal.SIGKILL)
        thread.join(timeout=300)
        assert writing and finished_before < 8 and not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        after = set(client.run(os.getpid).values())
    assert not before & after  # the workers were really replaced
    assert not list(out.glob(".*.part"))  # the killed tasks' temporary files are gone
    assert not list(tmp_path.glob(".dask.csplugin-*"))  # and the staging directory
    assert _files(tmp_path / "local").keys() == _files(out).keys()
    for a, b in zip(local.stacks, outcome["result"].stacks):  # type: ignore[union-attr]
        assert _unlabelled(a) == _unlabelled(b), b.name


def test_a_failed_task_raises_its_error_and_leaves_no_outputs(job: SyntheticJob,
                                                              runner: DaskRunner,
                                                              tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "J2" / "extract").mkdir(parents=True)
    table = open_particles(job.particles_cs)
    for stack in table.particles["stack"].unique():  # copies; one image gets a NaN
        target = project / "J2" / "extract" / Path(stack).name
        target.write_bytes(Path(stack).read_bytes())
    last = sorted((project / "J2" / "extract").iterdir())[-1]
    with mrcfile.mmap(last, mode="r+") as mrc:
        mrc.data[2, 5, 5] = np.nan
    bad = open_particles(job.particles_cs, project_dir=project)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="NaN"):
        export_aligned(bad, out, particles_per_stack=10, runner=runner)
    # no stacks, no metadata, no temporary files (the directory the run created is gone too)
    assert not out.exists() or list(out.iterdir()) == []
    assert not list(tmp_path.glob(".out.csplugin-*"))


def test_cli_workers_option_and_connection_errors(job: SyntheticJob, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    done = subprocess.run([sys.executable, "-m", "csplugin", "class-averages",
                           str(job.particles_cs), "-o", str(tmp_path / "dask"), "--workers", "2",
                           "--stacker", "median", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    local = class_averages(open_particles(job.particles_cs), tmp_path / "local",
                           stacker="median")
    assert _unlabelled(tmp_path / "dask/class_averages.mrcs") == _unlabelled(local.mrcs)
    with pytest.raises(InputError, match="exclude each other"):
        with connect("tcp://127.0.0.1:1", 2):
            pass
    monkeypatch.setattr("csplugin.app.dask.CONNECT_TIMEOUT", 1)
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        with connect("tcp://127.0.0.1:9"):
            pass
