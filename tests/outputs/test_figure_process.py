"""Figures drawn by forked processes: same files, errors raised in the job, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from csplugin.engines.power_spectrum import profiles
from csplugin.outputs import figures
from csplugin.outputs.figure_process import FigureProcess


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _fail(path: Path) -> None:
    raise ValueError(f"cannot draw {path.name}")


def _spectrum() -> np.ndarray:
    y, x = np.mgrid[-32:32, -32:32]
    return (1.0 + np.exp(-(x**2 + y**2) / 50.0)).astype(np.float32)


@pytest.mark.parametrize("processes", [0, 1, 2])
def test_figures_are_drawn_and_waited_for(tmp_path: Path, processes: int) -> None:
    spectrum = _spectrum()
    prof = profiles(spectrum, 1.5, "vertical")
    with FigureProcess(processes) as draw:
        draw(figures.spectrum_png, tmp_path / "a.png", spectrum, 1.5, prof, title="a")
        for k in range(3):
            draw(_write, tmp_path / f"t{k}.txt", str(k))
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(tmp_path / f"t{k}.txt").read_text() for k in range(3)] == ["0", "1", "2"]
    inline = tmp_path / "inline"
    inline.mkdir()
    figures.spectrum_png(inline / "a.png", spectrum, 1.5, prof, title="a")
    assert (inline / "a.png").stat().st_size == (tmp_path / "a.png").stat().st_size


def test_a_drawing_error_is_raised_in_the_job(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot draw x\.png"):
        with FigureProcess(1) as draw:
            draw(_fail, tmp_path / "x.png")


def test_a_job_error_drops_queued_figures_and_ends_the_processes(tmp_path: Path) -> None:
    draw = FigureProcess(1)
    pool = draw._pool
    assert pool is not None
    with pytest.raises(KeyError):
        with draw:
            draw(time.sleep, 1.0)  # the process is busy for a second ...
            for k in range(3):  # ... while these wait (fewer than QUEUED: no back-pressure)
                draw(_write, tmp_path / f"t{k}.txt", "x")
            raise KeyError("job failed")
    # the calls already handed to the process's queue (its size: processes + 1) ran, the
    # last one was dropped
    assert not (tmp_path / "t2.txt").exists() and len(list(tmp_path.iterdir())) <= 2
    assert draw._pool is None
    assert all(not p.is_alive() for p in pool._processes.values()) if pool._processes else True


def test_submit_returns_results_and_bounds_the_queue(tmp_path: Path) -> None:
    from csplugin.outputs.figure_process import QUEUED

    with FigureProcess(1) as draw:
        futures = [draw.submit(pow, k, 2) for k in range(3 * QUEUED)]
        assert [f.result() for f in futures] == [k * k for k in range(3 * QUEUED)]
    inline = FigureProcess(0).submit(pow, 3, 2)
    assert inline.done() and inline.result() == 9
    failed = FigureProcess(0).submit(_fail, tmp_path / "y.png")
    with pytest.raises(ValueError, match="cannot draw"):
        failed.result()


def test_drawing_processes_die_with_a_killed_job(tmp_path: Path) -> None:
    code = ("import os, sys, time\n"
            "from csplugin.outputs.figure_process import FigureProcess\n"
            "draw = FigureProcess(1)\n"
            "draw(time.sleep, 0.01)\n"
            "time.sleep(0.5)\n"
            "pids = [p.pid for p in draw._pool._processes.values()]\n"
            "print(*pids, flush=True)\n"
            "time.sleep(60)\n")
    job = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert job.stdout is not None
    pids = [int(p) for p in job.stdout.readline().split()]
    assert pids
    job.send_signal(signal.SIGKILL)
    job.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"  # a zombie is dead (its parent, the killed job, will not reap it)


def test_zero_processes_from_the_environment_draws_inline(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CSPLUGIN_FIGURE_PROCESSES", "0")
    with FigureProcess() as draw:
        assert draw._pool is None
        draw(_write, tmp_path / "now.txt", "y")
        assert (tmp_path / "now.txt").read_text() == "y"  # at the call
    assert os.environ["CSPLUGIN_FIGURE_PROCESSES"] == "0"
