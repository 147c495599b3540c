"""Fault injection: every job, run as the ``csplugin`` command on a small synthetic job, is
killed (SIGKILL), terminated (SIGTERM) or interrupted (SIGINT) at seeded random points while
it writes; the output directory must then hold nothing, the whole old result or the whole new
one, SIGTERM/SIGINT must exit 143/130 with one line and no traceback, and the next run must
succeed and leave no debris. Also: two concurrent jobs into one directory, and a full disk.

The default run does one trial per job kind it can afford (each ``csplugin`` process costs
seconds of imports); the randomized loops over every job and signal are marked ``slow``.
Outcomes are tabulated in docs/reliability.md ("Faults and concurrent runs").
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csplugin.synthetic import SyntheticJob, make_job

CLI = [sys.executable, "-c", "from csplugin.app.cli import main; main()"]
#: The job's options for the old result and for the new one (different file sets).
JOBS: dict[str, tuple[list[str], list[str]]] = {
    "export-aligned": (["--particles-per-stack", "100"], ["--particles-per-stack", "40"]),
    "power-spectrum": (["--classes", "0,1"], []),
    "class-averages": (["--classes", "0,1"], ["--stacker", "median"]),
    "classify": ([], ["--n-classes", "3"]),
    "convert": ([], []),
}
EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticJob:
    """3 classes x 100 particles of 64 px, 3 stacks."""
    return make_job(tmp_path_factory.mktemp("faultjob"), n_per_class=100, box=64, n_stacks=3,
                    seed=5)


# ------------------------------------------------------------------------------------ helpers
def _args(job: str, src: SyntheticJob, target: Path, options: list[str]) -> list[str]:
    if job == "convert":
        return ["convert", str(src.particles_cs), "-o", str(target), *options]
    return [job, str(src.particles_cs), "-o", str(target), "-q", *options]


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix in (".mrc", ".mrcs"):
        return data[:220] + data[1024:]  # not the header's text labels (creation time)
    if path.suffix in (".json", ".html") and b"seconds" in data:
        return b""  # run timings (classify's summary, the spectra's index.html)
    return data


def snapshot(target: Path) -> dict[str, bytes] | None:
    """Visible files of a directory (or the one file) -> comparable content; None: absent."""
    if target.is_file():
        return {target.name: _content(target)}
    if not target.exists():
        return None
    return {p.name: _content(p) for p in sorted(target.iterdir()) if not p.name.startswith(".")}


def debris(target: Path) -> list[str]:
    """Staging/old trees, temporary ``.part`` files, locks left for ``target``."""
    parent = target.parent
    found = [p.name for p in parent.iterdir() if p.name.startswith(f".{target.name}.")]
    if target.is_dir():
        found += [p.name for p in target.iterdir()
                  if p.name.endswith(".part") or p.name.startswith(".csplugin-new-")
                  or p.name == ".csplugin.lock"]
    return sorted(found)


def _writing(target: Path) -> Callable[[], bool]:
    """True once the job writes: its staging directory, or (convert) its lock, exists."""
    pattern = f".{target.name}.csplugin*"
    return lambda: any(target.parent.glob(pattern))


def run_cli(args: list[str], cwd: Path, inproc: bool = False) -> tuple[int, str]:
    """Run ``csplugin ARGS`` in ``cwd``: a new process, or (``inproc``, faster: no imports)
    the same commands in this one. Returns the exit status and stderr (empty in-process)."""
    if not inproc:
        done = subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stderr
    from csplugin.app.cli import app

    here = os.getcwd()
    os.chdir(cwd)
    try:
        status = app(args=args, prog_name="csplugin", standalone_mode=False)
    finally:
        os.chdir(here)
    return status or 0, ""


def interrupt(args: list[str], cwd: Path, when: Callable[[], bool], sig: int, delay: float,
              group: bool = False) -> tuple[int, str]:
    """Start the command, wait until ``when()``, then ``delay`` seconds, then send ``sig``
    (to its whole process group with ``group``, as a terminal's Ctrl-C). Returns the exit
    status and stderr."""
    proc = subprocess.Popen(CLI + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not when() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if group else os.kill)(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def trial(job: str, src: SyntheticJob, work: Path, sig: int, delay: float,
          reference: dict[str, dict[str, bytes] | None], inproc: bool = False) -> str:
    """One fault trial of ``job``: old result, interrupted new run, checks, next run.

    ``reference`` caches the old and new results of clean runs. Only the interrupted run is
    always a process of its own; with ``inproc`` the others run in this one. Returns the
    outcome in words for the table in docs/reliability.md.
    """
    old_opts, new_opts = JOBS[job]
    name = "out.star" if job == "convert" else "out"
    target = work / name
    for which, opts in (("old", old_opts), ("new", new_opts)):
        if which not in reference:  # a clean run, same relative paths (cwd = its parent)
            ref = work / f"ref_{which}"
            ref.mkdir()
            assert run_cli(_args(job, src, ref / name, opts), ref, inproc)[0] == 0
            reference[which] = snapshot(ref / name)
    if job == "convert":
        reference["old"] = {name: b"old result\n"}
    if job == "convert":
        target.write_bytes(b"old result\n")
    else:
        assert run_cli(_args(job, src, target, old_opts), work, inproc)[0] == 0
    assert snapshot(target) == reference["old"]
    status, err = interrupt(_args(job, src, target, [*new_opts, "--overwrite"]), work,
                            _writing(target), sig, delay)
    state = snapshot(target)
    holds = "old" if state == reference["old"] else "new" if state == reference["new"] else None
    assert holds is not None, f"{job}: a mix after {sig}: {sorted(state or {})}"
    if sig == signal.SIGKILL:
        assert status in (0, -signal.SIGKILL), err
    else:
        assert status in (0, EXIT[sig]), err
        assert "Traceback" not in err, err
        if status:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("interrupted"), err
        assert not debris(target), debris(target)  # SIGTERM/SIGINT clean up themselves
    left = debris(target)
    after = run_cli(_args(job, src, target, [*new_opts, "--overwrite"]), work, inproc)
    assert after[0] == 0, after[1]
    assert snapshot(target) == reference["new"] and not debris(target), debris(target)
    name = signal.Signals(sig).name
    return (f"{job} {name} {delay:.2f}s after writing began: exit {status}, held the whole "
            f"{holds} result" + (f", debris {len(left)} left for the next run" if left else "")
            + "; next run whole, no debris")


def _log(line: str) -> None:
    print(line)  # shown with -s; the table in docs/reliability.md records such lines


# ------------------------------------------------------------------------------ fast trials
@pytest.mark.parametrize(("job", "sig"), [("export-aligned", signal.SIGTERM),
                                          ("class-averages", signal.SIGINT),
                                          ("convert", signal.SIGKILL)])
def test_interrupted_job_leaves_old_or_new_result(job: str, sig: int, small: SyntheticJob,
                                                  tmp_path: Path) -> None:
    rng = random.Random(f"{job}-{sig}")
    span = 0.08 if job == "convert" else 0.3  # convert writes within ~0.1 s of locking
    _log(trial(job, small, tmp_path, sig, rng.uniform(0.0, span), {}, inproc=True))


def test_sigterm_before_writing_exits_143_with_one_line(small: SyntheticJob,
                                                        tmp_path: Path) -> None:
    old = tmp_path / "out"
    old.mkdir()
    (old / "mine.txt").write_text("kept")
    status, err = interrupt(_args("power-spectrum", small, old, []), tmp_path,
                            _writing(old), signal.SIGTERM, 0.0)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 143 and len(lines) == 1 and "interrupted (SIGTERM)" in lines[0], err
    assert snapshot(old) == {"mine.txt": b"kept"} and not debris(old)


def test_two_concurrent_jobs_one_succeeds_the_other_gets_one_line(small: SyntheticJob,
                                                                  tmp_path: Path) -> None:
    target = tmp_path / "out"
    args = [CLI + _args("export-aligned", small, target, opts)
            for opts in (["--particles-per-stack", "100"], ["--particles-per-stack", "40"])]
    procs = [subprocess.Popen(a, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for a in args]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    lines = [line for line in loser.splitlines() if line.strip()]
    assert len(lines) == 1 and ("is in use by csplugin pid" in lines[0]
                                or "already exists" in lines[0]), loser
    winner = 0 if results[0][0] == 0 else 1
    stacks = 3 if winner == 0 else 8
    names = sorted(p.name for p in target.iterdir() if not p.name.startswith("."))
    assert names == ["particles.cs", "particles.star",
                     *(f"particles_aligned_{k:04d}.mrcs" for k in range(stacks))]
    assert not debris(target)


# ----------------------------------------------------------------------------------- disk full
@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (skips where mounting is not allowed)."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'}); "
                    "the disk-full path is covered by tests/outputs/test_directory.py with a "
                    "simulated ENOSPC")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_gives_one_line_and_leaves_nothing(small: SyntheticJob, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from csplugin.core.particles import open_particles
    from csplugin.jobs.class_averages import class_averages
    from csplugin.jobs.export_aligned import export_aligned
    from formats import InputError

    table = open_particles(small.particles_cs)
    with small_filesystem(tmp_path / "fs", "64k") as fs:
        monkeypatch.chdir(fs)
        (fs / "old").mkdir()
        (fs / "old" / "class_averages.png").write_bytes(b"previous")
        with pytest.raises(InputError) as full:  # no size estimate: fails while writing
            class_averages(table, fs / "old", overwrite=True)
        message = str(full.value)
        assert "ran out of space" in message and "\n" not in message, message
        assert snapshot(fs / "old") == {"class_averages.png": b"previous"}
        assert not debris(fs / "old")
        with pytest.raises(InputError) as refused:  # estimate known: refused before writing
            export_aligned(table, fs / "exp")
        assert "needs about" in str(refused.value) and not (fs / "exp").exists()
        _log(f"disk full: {message}\nrefused: {refused.value}")
        assert sorted(os.listdir(fs)) == ["old"]
        probe = fs / "fill"
        with pytest.raises(OSError) as fill:  # the file system really is small
            probe.write_bytes(b"0" * (1 << 20))
        assert fill.value.errno == errno.ENOSPC


# ------------------------------------------------------------------------------ slow: loops
@pytest.mark.slow
@pytest.mark.parametrize("job", list(JOBS))
def test_randomized_faults_every_job(job: str, small: SyntheticJob, tmp_path: Path) -> None:
    rng = random.Random(f"faults-{job}")
    reference: dict[str, dict[str, bytes] | None] = {}
    for i, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGINT)):
        work = tmp_path / f"t{i}"
        work.mkdir()
        span = 0.08 if job == "convert" else 0.6  # convert writes within ~0.1 s of locking
        _log(trial(job, small, work, sig, rng.uniform(0.0, span), reference, inproc=True))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dask_interrupt_one_line_no_worker_tracebacks(sig: int, small: SyntheticJob,
                                                      tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    target = tmp_path / "out"
    args = _args("export-aligned", small, target, ["--particles-per-stack", "40",
                                                   "--workers", "2"])
    status, err = interrupt(args, tmp_path, _writing(target), sig, 0.2, group=True)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert status == 0 or (status == EXIT[sig] and len(lines) == 1
                           and lines[0].startswith("interrupted")), err
    assert snapshot(target) in (None, {}) or status == 0
    assert not debris(target), debris(target)
    _log(f"dask {signal.Signals(sig).name}: exit {status}, {lines[-1] if lines else ''}")
