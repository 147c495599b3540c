"""The output-directory helper (csplugin.outputs.directory): lock, build beside and swap, debris.

Unit tests on small files; the jobs under faults are in test_faults.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csplugin.outputs import directory as od
from csplugin.outputs import lock as lk
from csplugin.outputs import swap
from csplugin.outputs.paths import relion_path
from formats import InputError


@od.transaction()
def _job(outdir: Path, files: dict[str, str], *, overwrite: bool = False, fail_after: int = -1,
         job: str = "toy") -> od.OutputDir:
    """A toy job writing ``files`` (name -> text); raises after ``fail_after`` files."""
    out = od.claim(outdir, list(files), job=job, overwrite=overwrite)
    for i, (name, text) in enumerate(files.items()):
        if i == fail_after:
            raise RuntimeError("midway")
        out.stage(name).write_text(text)
    return out


def _visible(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())
            if not p.name.startswith(".")}


def _debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.rglob("*")
                  if ".csplugin-new-" in p.name or ".csplugin-old-" in p.name
                  or p.name.endswith(".part") or p.name.endswith(".lock"))


# ------------------------------------------------------------------------------------- lock
def test_second_job_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"

    @od.transaction()
    def outer() -> None:
        od.claim(out, ["a"], job="toy")
        child = subprocess.run(  # a second process trying the same directory meanwhile
            [sys.executable, "-c", "from pathlib import Path\n"
             "from csplugin.outputs import directory as od\n"
             "from formats import InputError\n"
             "try:\n"
             "    with od.transaction():\n"
             f"        od.claim(Path({str(out)!r}), ['b'], job='toy')\n"
             "except InputError as e:\n"
             "    print(e)\n"],
            capture_output=True, text=True, timeout=60)
        message = child.stdout.strip()
        assert f"is in use by csplugin pid {os.getpid()} on host {socket.gethostname()}" \
            in message and "\n" not in message, child

    outer()
    assert not (out / od.LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = {"pid": dead.pid, "host": socket.gethostname(), "started": "x", "command": "old",
            "proc_start": "1", "boot_id": lk._boot_id(), "token": "t"}
    (out / od.LOCK_NAME).write_text(json.dumps(lock))
    _job(out, {"a": "1"})
    assert _visible(out) == {"a": "1"} and not (out / od.LOCK_NAME).exists()


def test_lock_of_a_reused_pid_is_stale(tmp_path: Path) -> None:
    """Our own (live) pid with another start time: the pid was reused."""
    lock = tmp_path / "l"
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": "0",
              "boot_id": lk._boot_id()}
    assert lk.is_stale(lock, holder)
    holder["proc_start"] = lk._proc_start(os.getpid())
    assert not lk.is_stale(lock, holder)
    holder["boot_id"] = "another-boot"
    assert lk.is_stale(lock, holder)


def test_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / od.LOCK_NAME).write_text(json.dumps(
        {"pid": 1, "host": "node-elsewhere", "started": "t", "command": "c", "token": "x"}))
    with pytest.raises(InputError) as info:
        _job(out, {"a": "1"})
    assert "node-elsewhere" in str(info.value) and f"remove {out / od.LOCK_NAME}" in str(
        info.value)
    assert (out / od.LOCK_NAME).exists() and not _visible(out)


# ------------------------------------------------------------------------------------- swap
def test_old_result_intact_when_the_job_raises_midway(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _job(out, {"a": "old", "b": "old"})
    with pytest.raises(RuntimeError):
        _job(out, {"a": "new", "b": "new"}, overwrite=True, fail_after=1)
    assert _visible(out) == {"a": "old", "b": "old"}
    assert not _debris(tmp_path)


def test_failed_first_run_leaves_no_directory(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        _job(tmp_path / "a" / "out", {"x": "1"}, fail_after=0)
    assert not (tmp_path / "a" / "out").exists() and not _debris(tmp_path)


def test_stale_products_removed_foreign_files_and_other_jobs_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _job(out, {f"stack_{k}": "old" for k in range(4)} | {"meta": "old"})
    _job(out, {"spectrum": "other"}, job="other")
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "f").write_text("deep")
    inode = (out / "notes.txt").stat().st_ino
    _job(out, {"stack_0": "new", "meta": "new"}, overwrite=True)
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert names == {"stack_0", "meta", "spectrum", "notes.txt", "sub"}
    assert (out / "stack_0").read_text() == "new" and (out / "spectrum").read_text() == "other"
    assert (out / "sub" / "f").read_text() == "deep"
    assert (out / "notes.txt").stat().st_ino == inode  # carried by a hard link
    manifest = od.read_manifest(out)
    assert manifest["toy"]["products"] == ["meta", "stack_0"]
    assert manifest["other"]["products"] == ["spectrum"]
    assert not _debris(tmp_path)


def test_existing_products_refused_without_overwrite_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _job(out, {"a": "1", "b": "1"})
    with pytest.raises(InputError, match=r"already exists \(pass --overwrite"):
        _job(out, {"c": "2"})  # by manifest: the previous result of the same job
    (out / "x").write_text("user")
    with pytest.raises(InputError, match="x: already exists"):
        _job(out, {"x": "2"}, job="other")  # by name
    _job(out, {"y": "2"}, job="other")  # another job's new file: fine
    assert _visible(out) == {"a": "1", "b": "1", "x": "user", "y": "2"}


def test_paths_written_into_files_name_the_final_directory(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.chdir(tmp_path)
    seen = {}

    @od.transaction()
    def job() -> None:
        out = od.claim(Path("out"), ["s.mrcs"], job="toy")
        seen["staged"] = out.stage("s.mrcs")
        seen["relion"] = relion_path(out.stage("s.mrcs"))

    job()
    assert seen["relion"] == "out/s.mrcs" and "csplugin-new" in str(seen["staged"])


def test_nested_claim_joins_the_outer_transaction(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with od.transaction():
        first = od.claim(out, ["a"], job="toy")
        inner = _job(out, {"b": "1"}, overwrite=True)  # its own @transaction, same dir
        assert inner is first and not (out / "b").exists()  # not yet committed
    assert _visible(out) == {"b": "1"}


def test_exchange_is_atomic_rename_exchange(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "y").write_text("b")
    if not swap.exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) unavailable here (the two-rename fallback is used)")
    assert (a / "y").exists() and (b / "x").exists()


# ----------------------------------------------------------------------------------- debris
def test_debris_of_killed_runs_is_removed_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _job(out, {"a": "old"})
    staging = tmp_path / ".out.csplugin-new-999999"
    staging.mkdir()
    (staging / "big.mrcs").write_bytes(b"0" * 1000)
    (tmp_path / ".out.csplugin-old-999998").mkdir()
    (out / ".a.x1y2.part").write_bytes(b"partial")
    (out / ".csplugin-write-test-77").touch()
    (out / od.LOCK_NAME).write_text(json.dumps(
        {"pid": 999999, "host": socket.gethostname(), "token": "z"}))
    _job(out, {"a": "new"}, overwrite=True)
    assert _visible(out) == {"a": "new"} and not _debris(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [od.MANIFEST_NAME, "a"]


def test_single_file_lock_and_part_debris(tmp_path: Path) -> None:
    target = tmp_path / "new" / "x.star"
    target.parent.mkdir()
    (target.parent / ".x.star.abc.part").write_text("partial")
    with od.single_file(target) as path:
        assert (target.parent / ".x.star.csplugin.lock").exists()
        with pytest.raises(InputError, match="in use by csplugin pid"):
            with od.single_file(target):
                pass
        path.write_text("done")
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.star"]
    with pytest.raises(InputError, match="already exists"):
        with od.single_file(target):
            pass
    with pytest.raises(InputError, match="is a directory"):
        with od.single_file(tmp_path):
            pass


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    import errno

    out = tmp_path / "out"
    _job(out, {"a": "old"})

    @od.transaction()
    def full() -> None:
        o = od.claim(out, ["a"], job="toy", overwrite=True, needs_bytes=10)
        o.stage("a").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(InputError) as info:
        full()
    assert "ran out of space" in str(info.value) and "\n" not in str(info.value)
    assert _visible(out) == {"a": "old"} and not _debris(tmp_path)
    with pytest.raises(InputError, match="needs about"):
        with od.transaction():
            od.claim(tmp_path / "big", [], job="toy", needs_bytes=1 << 60)
    assert not (tmp_path / "big").exists()


def test_sigterm_during_the_commit_is_held_back_until_it_is_done(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    import signal

    out = tmp_path / "out"
    _job(out, {"a": "old", "b": "old"})
    (out / "user.txt").write_text("mine")
    carry = swap.carry

    def carry_and_terminate(src: Path, dst: Path) -> None:  # SIGTERM in mid-commit
        os.kill(os.getpid(), signal.SIGTERM)
        carry(src, dst)

    monkeypatch.setattr(swap, "carry", carry_and_terminate)
    with od.interrupt_handlers(), pytest.raises(od.Terminated):
        _job(out, {"a": "new"}, overwrite=True)
    assert _visible(out) == {"a": "new", "user.txt": "mine"} and not _debris(tmp_path)
    assert od.last_outcome() == f"{out} holds the complete new result"


def test_sigterm_while_writing_aborts_and_says_so(tmp_path: Path) -> None:
    import signal

    out = tmp_path / "out"
    _job(out, {"a": "old"})

    @od.transaction()
    def job() -> None:
        o = od.claim(out, ["a"], job="toy", overwrite=True)
        o.stage("a").write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
        o.stage("b").write_text("never")

    with od.interrupt_handlers(), pytest.raises(od.Terminated):
        job()
    assert _visible(out) == {"a": "old"} and not _debris(tmp_path)
    assert od.last_outcome() == f"nothing written; {out} keeps its previous result"


@pytest.mark.parametrize("when", ["before the exchange", "after the exchange"])
def test_sigkill_during_the_commit_leaves_one_whole_result(when: str, tmp_path: Path) -> None:
    """A toy job kills itself (SIGKILL) in the middle of its commit: OUTDIR holds the old
    result (before the exchange) or the new one (after); the next claim removes the debris."""
    out = tmp_path / "out"
    _job(out, {"a": "old", "b": "old"})
    script = f"""
import os, signal
from pathlib import Path
from csplugin.outputs import directory as od, swap
real = swap.exchange
def exchange(a, b):
    if {when == "before the exchange"}:
        os.kill(os.getpid(), signal.SIGKILL)
    done = real(a, b)
    os.kill(os.getpid(), signal.SIGKILL)
swap.exchange = exchange
with od.transaction():
    o = od.claim(Path({str(out)!r}), ["a"], job="toy", overwrite=True)
    o.stage("a").write_text("new")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -9, done.stderr
    expected = {"a": "old", "b": "old"} if when == "before the exchange" else {"a": "new"}
    assert _visible(out) == expected and _debris(tmp_path)  # staging or old tree, lock
    _job(out, {"c": "next"}, job="other")
    assert _visible(out) == {**expected, "c": "next"} and not _debris(tmp_path)


def test_two_rename_fallback_without_renameat2(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swap, "_renameat2", None)
    out = tmp_path / "out"
    _job(out, {"a": "old", "b": "old"})
    (out / "user.txt").write_text("mine")
    _job(out, {"a": "new"}, overwrite=True)
    assert _visible(out) == {"a": "new", "user.txt": "mine"} and not _debris(tmp_path)


def test_outdir_that_is_a_mount_point_is_staged_inside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        _job(out, {"a": "old", "b": "old"})
        (out / "user.txt").write_text("mine")
        with pytest.raises(RuntimeError):
            _job(out, {"a": "new", "c": "new"}, overwrite=True, fail_after=1)
        assert _visible(out) == {"a": "old", "b": "old", "user.txt": "mine"}
        _job(out, {"a": "new"}, overwrite=True)  # renamed in one by one; stale b removed
        assert _visible(out) == {"a": "new", "user.txt": "mine"} and not _debris(tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


def test_another_thread_of_this_process_is_refused_not_joined(tmp_path: Path) -> None:
    import threading

    out, errors = tmp_path / "out", []

    def second() -> None:
        try:
            _job(out, {"b": "2"}, overwrite=True)
        except InputError as exc:
            errors.append(str(exc))

    with od.transaction():
        od.claim(out, ["a"], job="toy")
        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert len(errors) == 1 and f"in use by csplugin pid {os.getpid()}" in errors[0]


def test_outdir_holding_the_current_directory_or_a_link(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _job(out, {"a": "old", "b": "old"})
    monkeypatch.chdir(out)
    _job(Path("."), {"a": "new"}, overwrite=True)  # staged inside: cwd stays valid
    assert Path.cwd() == out and _visible(Path(".")) == {"a": "new"} and not _debris(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(out)
    _job(tmp_path / "link", {"a": "newer"}, overwrite=True)  # the named directory is swapped
    assert (tmp_path / "link").is_symlink() and _visible(out) == {"a": "newer"}
    assert not _debris(tmp_path)


def test_signal_inside_a_c_callback_is_sent_again_not_lost(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Python prints and drops an exception raised in code that C calls back (llvmlite's
    object cache while numba compiles); the handler re-sends the signal instead."""
    import signal
    import threading
    import types

    from csplugin.outputs import signals

    sent, done = [], threading.Event()
    monkeypatch.setattr(signals.os, "kill", lambda pid, sig: (sent.append(sig), done.set()))
    callback = types.SimpleNamespace(f_code=types.SimpleNamespace(
        co_filename="/x/site-packages/llvmlite/binding/executionengine.py"))
    signals._on_signal(signal.SIGTERM, callback)  # no exception here
    assert done.wait(5) and sent == [signal.SIGTERM]
    with pytest.raises(od.Terminated):
        signals._on_signal(signal.SIGTERM, None)


def test_a_lock_is_never_seen_empty(tmp_path: Path) -> None:
    """The lock appears whole (hard link of a written file): a job polling it while another
    takes and releases it at least 300 times (and until the poller has seen it held 20
    times, or 20 s) never reads an empty or partial lock."""
    lock, stop = tmp_path / ".csplugin.lock", tmp_path / "stop"
    code = ("import sys; from pathlib import Path; "
            "from csplugin.outputs.lock import acquire_lock, release_lock\n"
            "lock, stop, i = Path(sys.argv[1]), Path(sys.argv[2]), 0\n"
            "while i < 300 or not stop.exists():\n"
            "    release_lock(lock, acquire_lock(lock))\n"
            "    i += 1\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(lock), str(stop)])
    seen, start = 0, time.monotonic()
    while child.poll() is None:
        holder = lk.lock_holder(lock)
        if holder is not None:
            assert holder.get("pid") == child.pid, holder
            seen += 1
        if seen >= 20 or time.monotonic() - start > 20:
            stop.touch()
    assert child.returncode == 0 and seen > 0
    assert not list(tmp_path.glob(".*.part"))
