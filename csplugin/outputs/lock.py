"""The lock file of an output directory: who holds it, whether that job is gone.

A lock is JSON ``{pid, host, started, command, proc_start, boot_id, token}`` in a file created
with ``O_CREAT | O_EXCL``. It is stale when written on this host and its process is gone, its
pid now belongs to another process (start time in ``/proc/PID/stat``), or the machine has
rebooted (``boot_id``); a lock from another host is never taken over.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from formats import InputError

#: Seconds after which a lock file that holds no readable JSON counts as stale (its writer
#: died between creating and writing it, a few microseconds).
UNREADABLE_LOCK_AGE = 10.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or ''."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2:].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def command_line() -> str:
    """The command line of this process, for the lock and the manifest."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"


def lock_holder(lock: Path) -> dict[str, Any] | None:
    """The JSON of a lock file; None when absent; ``{}`` when unreadable."""
    try:
        data = lock.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def is_stale(lock: Path, holder: dict[str, Any]) -> bool:
    """Whether the job that wrote ``holder`` (the JSON of ``lock``) is certainly gone."""
    if not holder:
        try:
            return time.time() - lock.stat().st_mtime > UNREADABLE_LOCK_AGE
        except OSError:
            return False
    if holder.get("host") != socket.gethostname():
        return False
    if holder.get("boot_id") and holder.get("boot_id") != _boot_id():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return True
    return bool(holder.get("proc_start")) and holder.get("proc_start") != _proc_start(pid)


def acquire_lock(lock: Path, command: str | None = None) -> dict[str, Any]:
    """Create ``lock`` (``O_CREAT | O_EXCL``) holding this process's JSON and return it.

    Raises
    ------
    InputError
        The lock is held by a live job here, or by any job on another host.
    """
    pid = os.getpid()
    info = {"pid": pid, "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command or command_line(), "proc_start": _proc_start(pid),
            "boot_id": _boot_id(), "token": uuid.uuid4().hex}
    data = json.dumps(info).encode()
    # written whole beside the lock, then hard-linked into place (fails if the lock exists):
    # another job never reads a lock that is still empty
    tmp = lock.with_name(f".{lock.name}.{info['token']}.part")
    for _ in range(10):
        try:
            tmp.write_bytes(data)
            _link_or_create(tmp, lock, data)
            return info
        except FileExistsError:
            holder = lock_holder(lock)
            if holder is None:
                continue  # released meanwhile
            if is_stale(lock, holder):
                _remove_stale_lock(lock, holder)
                continue
            raise _held(lock, holder) from None
        except FileNotFoundError:
            continue  # the holder's debris clean-up took our .part: write it again
        finally:
            tmp.unlink(missing_ok=True)
    raise InputError(lock.parent, "its lock kept changing hands",
                     "another csplugin job is starting there; try again")


def _link_or_create(tmp: Path, lock: Path, data: bytes) -> None:
    """Make ``lock`` hold ``data``, failing with FileExistsError when it exists: a hard link of
    ``tmp`` (atomic and whole), or ``O_EXCL`` create-and-write where the file system has no
    hard links."""
    try:
        os.link(tmp, lock)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    except BaseException:
        os.close(fd)
        lock.unlink(missing_ok=True)
        raise
    os.close(fd)


def _held(lock: Path, holder: dict[str, Any]) -> InputError:
    who = (f"csplugin pid {holder.get('pid')} on host {holder.get('host')} since "
           f"{holder.get('started')} ({holder.get('command')})") if holder else "a csplugin job"
    if holder and holder.get("host") != socket.gethostname():
        fix = (f"wait for it to finish; if no csplugin job runs on {holder.get('host')}, "
               f"remove {lock}")
    else:
        fix = "wait for it to finish, or choose another output directory"
    return InputError(lock.parent, f"is in use by {who}", fix)


def _remove_stale_lock(lock: Path, seen: dict[str, Any]) -> None:
    """Unlink ``lock`` if it still holds ``seen``, under an flock of its directory (so that
    two jobs taking over the same stale lock cannot remove each other's new one)."""
    fd = os.open(lock.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if lock_holder(lock) == seen:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the flock


def release_lock(lock: Path, info: dict[str, Any]) -> None:
    """Remove ``lock`` if it is this job's (same token)."""
    holder = lock_holder(lock)
    if holder and holder.get("token") == info.get("token"):
        lock.unlink(missing_ok=True)
