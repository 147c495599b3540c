"""One output directory per job: locked, built beside, swapped in whole.

Every job that writes an ``OUTDIR`` (export-aligned, power-spectrum, class-averages and its
``--select`` path, classify, :meth:`~csplugin.averaging.sources.ClassAvgSource.save`) goes
through :func:`claim` inside a :func:`transaction`::

    @transaction()
    def my_job(table, outdir, overwrite=False):
        out = claim(outdir, ["result.mrc", "summary.json"], job="my-job", overwrite=overwrite)
        write_image(out.stage("result.mrc"), ...)       # write into the staging directory
        ...                                             # return out.final(...) paths
    # on return: the staged result replaces OUTDIR's previous one in one step
    # on any exception: the staging directory is removed, OUTDIR is as it was

Guarantees
----------
Lock
    :func:`claim` creates ``OUTDIR`` (parents too) and ``OUTDIR/.csplugin.lock`` with
    ``O_CREAT | O_EXCL``, holding JSON ``{pid, host, started, command, proc_start, boot_id,
    token}``. A second job into the same directory gets an :class:`~formats.InputError`
    naming the holder. A lock is *stale*, and is taken over, when it was written on this
    host and its process is gone, or the pid now belongs to another process (its start time
    in ``/proc/PID/stat`` differs), or the machine has rebooted since (``boot_id``). The
    take-over re-reads the lock under an ``flock`` of ``OUTDIR`` so that two jobs cannot both
    take it. A lock from another host is never taken over: the message says how to remove it
    when no job runs there.
Build beside, swap
    Products are written into ``PARENT/.NAME.csplugin-new-PID`` (a sibling of ``OUTDIR`` on
    the same file system), while every path written *into* a file names the final place
    (:func:`final_path`; :func:`csplugin.outputs.paths.relion_path` applies it). At commit,
    whatever the staging directory holds is the new result: its names go into
    ``.csplugin-result.json`` (the manifest, written last), every entry of the old
    ``OUTDIR`` that is not a product of this job's previous result (manifest) nor lock or
    debris is carried over (hard link, else copy), the lock is copied in, and the two
    directories are exchanged by ``renameat2(RENAME_EXCHANGE)``. So ``OUTDIR`` holds the
    whole old result or the whole new one at every instant, and stale files of a larger
    previous result (e.g. ``particles_aligned_0007.mrcs``) disappear with the swap. Entries
    that appeared in the old directory during the commit are moved over after the
    exchange; then the old tree is deleted and the lock released.

    Fallbacks: without ``renameat2`` (not Linux, old kernel, a file system without
    ``RENAME_EXCHANGE``) the exchange is two renames, so ``OUTDIR`` is briefly absent.
    When the sibling cannot be made (``PARENT`` not writable, ``OUTDIR`` a mount point) or
    must not be (the current directory lies in ``OUTDIR``: it would end in the deleted old
    tree), the staging directory is ``OUTDIR/.csplugin-new-PID`` and its entries are renamed
    into place one by one: each file is whole, but a crash during those renames can leave a
    mix. A symbolic link ``OUTDIR`` is followed: the directory it names is swapped.
Overwrite
    Without ``overwrite``, a product that exists (by name, or listed in the manifest of this
    job's previous result) is refused before any work. Results of *other* jobs in the same
    directory, and files that are not csplugin's, are always kept.
Faults
    Any exception (also :class:`KeyboardInterrupt` and :class:`Terminated`) removes the
    staging directory and releases the lock; ``OUTDIR`` keeps its previous result (or is
    removed again when the job created it and it is empty). ``ENOSPC``/``EDQUOT`` become one
    line naming the directory and the space needed where known. What a ``SIGKILL`` leaves
    (staging or old trees of dead runs, hidden ``.*.part`` files of
    :func:`formats.atomic.atomic_output`, a stale lock) is removed by the next job that
    claims the directory. :func:`interrupt_handlers` turns ``SIGTERM`` into
    :class:`Terminated` (a :class:`KeyboardInterrupt`) and holds both signals back while a
    commit or clean-up runs.

Single files (``csplugin convert``) use :func:`single_file`: a lock ``PARENT/.NAME.csplugin.lock``
and the dead runs' ``.NAME.*.part`` files removed; the file itself is written atomically.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import errno
import glob
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from csplugin.outputs import swap
from csplugin.outputs.lock import acquire_lock, command_line, release_lock
from csplugin.outputs.signals import Terminated, critical, interrupt_handlers  # noqa: F401
from formats import InputError

LOCK_NAME = ".csplugin.lock"
MANIFEST_NAME = ".csplugin-result.json"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_INTERNAL = (LOCK_NAME, MANIFEST_NAME)


# -------------------------------------------------------------------------------- debris
def _staging_names(outdir: Path) -> list[Path]:
    """Sibling staging/old trees of ``outdir`` and the in-place staging directories."""
    name = glob.escape(outdir.name)
    found = [*outdir.parent.glob(f".{name}.csplugin-new-*"),
             *outdir.parent.glob(f".{name}.csplugin-old-*")]
    return found + list(outdir.glob(".csplugin-new-*"))


def clean_debris(outdir: Path) -> list[Path]:
    """Remove what killed runs left for ``outdir``: staging and old trees, hidden ``.*.part``
    files and write probes. Call only while holding ``outdir``'s lock."""
    removed = _staging_names(outdir)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    for pattern in (".*.part", ".csplugin-write-test-*"):
        for path in outdir.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _is_debris(name: str) -> bool:
    return name.endswith(".part") and name.startswith(".") or name.startswith(
        (".csplugin-new-", ".csplugin-write-test-"))


# -------------------------------------------------------------------------------- manifest
def read_manifest(outdir: Path) -> dict[str, dict[str, Any]]:
    """``{job: {"products": [...], ...}}`` of the csplugin results in ``outdir``."""
    try:
        data = json.loads((outdir / MANIFEST_NAME).read_text())
        results = data.get("results", {})
        return {str(k): v for k, v in results.items()
                if isinstance(v, dict) and isinstance(v.get("products"), list)}
    except (OSError, ValueError, AttributeError):
        return {}


# ------------------------------------------------------------------------- the directory
_scopes: contextvars.ContextVar[tuple[list[tuple[OutputDir, bool]], ...]] = \
    contextvars.ContextVar("csplugin_output_scopes", default=())
_active: dict[Path, OutputDir] = {}
_active_lock = threading.Lock()
_last_outcome: str | None = None


def last_outcome() -> str | None:
    """What the last committed or abandoned output directory holds, for messages, e.g.
    ``"nothing written; out/ keeps its previous result"``."""
    return _last_outcome


class OutputDir:
    """A claimed output directory (see the module docstring); made by :func:`claim`.

    Attributes
    ----------
    path
        ``OUTDIR`` as given: where the result will be.
    staging
        Where the job writes it meanwhile.
    job
        The job's name in the manifest.
    """

    def __init__(self, path: Path, job: str, command: str | None = None) -> None:
        self.path = Path(path)
        self.job = job
        self.command = command or command_line()
        self.real = Path(os.path.realpath(self.path))  # moved as a directory, never as a link
        self.staging = self.real.parent / f".{self.real.name}.csplugin-new-{os.getpid()}"
        self.in_place = False
        self.needs_bytes: int | None = None
        self.failed, self.thread = False, threading.get_ident()
        self._lock_info: dict[str, Any] | None = None
        self._created = False
        self._had_result = False
        self._done = False
        self._swapped = False

    # ----------------------------------------------------------------------------- paths
    def stage(self, name: str) -> Path:
        """Where to write product ``name`` (a file name in ``OUTDIR``)."""
        return self.staging / name

    def final(self, path: str | Path) -> Path:
        """The final path of a staged path (or of a name in ``OUTDIR``)."""
        path = Path(path)
        try:
            return self.path / path.absolute().relative_to(self.staging.absolute())
        except ValueError:
            return self.path / path if not path.is_absolute() else path

    @property
    def lock(self) -> Path:
        return self.path / LOCK_NAME

    # ------------------------------------------------------------------------------ open
    def open(self, products: Iterable[str], overwrite: bool,
             overwrite_hint: str = "pass --overwrite to replace it") -> None:
        """Create and lock ``OUTDIR``, clean debris, refuse existing products without
        ``overwrite``, check the space, create the staging directory."""
        global _last_outcome
        _last_outcome = None
        with critical():
            self._created = not os.path.lexists(self.path)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                if not self.path.is_dir():
                    raise InputError(self.path, "is not a directory",
                                     "give a directory as the output")
                self._lock_info = acquire_lock(self.lock, self.command)
            except InputError:
                self._remove_if_created()
                raise
            except OSError as exc:
                self._remove_if_created()
                raise _os_error(self.path, exc) from None
            try:
                self._prepare(list(products), overwrite, overwrite_hint)
            except BaseException:
                self._release()
                self._remove_if_created()
                raise

    def _prepare(self, products: list[str], overwrite: bool, hint: str) -> None:
        clean_debris(self.real)
        manifest = read_manifest(self.path)
        previous = [p for p in manifest.get(self.job, {}).get("products", [])
                    if os.path.lexists(self.path / p)]
        existing = [p for p in products if os.path.lexists(self.path / p)]
        self._had_result = bool(previous or existing)
        if (existing or previous) and not overwrite:
            raise InputError(self.path / (existing or previous)[0], "already exists", hint)
        self._check_space()
        if Path.cwd().is_relative_to(self.real):  # a swap would leave cwd in the old tree
            self._stage_in_place()
            return
        try:
            self.staging.mkdir()
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EXDEV):
                raise _os_error(self.path, exc) from None
            self._stage_in_place()
            return
        if os.stat(self.staging).st_dev != os.stat(self.path).st_dev \
                or os.path.ismount(self.real):
            self.staging.rmdir()
            self._stage_in_place()

    def _stage_in_place(self) -> None:
        self.in_place = True
        self.staging = self.path / f".csplugin-new-{os.getpid()}"
        try:
            self.staging.mkdir()
        except OSError as exc:
            raise _os_error(self.path, exc) from None

    def _check_space(self) -> None:
        if not self.needs_bytes:
            return
        try:
            st = os.statvfs(self.path)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < self.needs_bytes:
            raise InputError(self.path, f"needs about {_size(self.needs_bytes)} but its file "
                             f"system has {_size(free)} free",
                             "free some space or choose another output directory")

    # ---------------------------------------------------------------------------- commit
    def commit(self) -> None:
        """Make the staged result ``OUTDIR``'s (module docstring), release the lock."""
        global _last_outcome
        if self._done:
            return
        with critical():
            try:
                self._commit()
            except BaseException:
                self.abort()
                raise
            self._done = True
            _last_outcome = f"{self.path} holds the complete new result"
            self._release()

    def _commit(self) -> None:
        for path in self.staging.glob(".*.part"):  # e.g. of a Dask task that died and reran
            path.unlink(missing_ok=True)
        products = sorted(e.name for e in os.scandir(self.staging) if e.name not in _INTERNAL)
        old = read_manifest(self.path)
        stale = set(old.get(self.job, {}).get("products", []))
        results = {job: {**entry, "products": [p for p in entry["products"]
                                               if p not in products and p not in stale]}
                   for job, entry in old.items() if job != self.job}
        results = {job: entry for job, entry in results.items() if entry["products"]}
        results[self.job] = {"products": products, "command": self.command,
                             "finished": datetime.datetime.now().astimezone().isoformat(
                                 timespec="seconds"),
                             "host": socket.gethostname(), "pid": os.getpid()}
        manifest = json.dumps({"format": "csplugin-result 1", "results": results}, indent=1)
        if self.in_place:
            self._commit_in_place(products, stale, manifest)
            return
        (self.staging / MANIFEST_NAME).write_text(manifest + "\n")
        skip = set(products) | stale | set(_INTERNAL)
        for entry in os.scandir(self.path):
            if entry.name not in skip and not _is_debris(entry.name):
                swap.carry(Path(entry.path), self.staging / entry.name)
        shutil.copyfile(self.lock, self.staging / LOCK_NAME)
        swapped = swap.exchange(self.real, self.staging)
        if not swapped:
            old_tree = self.real.parent / f".{self.real.name}.csplugin-old-{os.getpid()}"
            os.rename(self.real, old_tree)
            try:
                os.rename(self.staging, self.real)
            except OSError:
                os.rename(old_tree, self.real)
                raise
            self.staging = old_tree
        self._swapped = True
        # the old tree is now at self.staging: keep what appeared there during the commit
        for entry in os.scandir(self.staging):
            if entry.name not in skip and not _is_debris(entry.name) \
                    and not os.path.lexists(self.path / entry.name):
                with contextlib.suppress(OSError):
                    os.rename(entry.path, self.path / entry.name)
        swap.remove_tree(self.staging)

    def _commit_in_place(self, products: list[str], stale: set[str], manifest: str) -> None:
        for name in products:
            target = self.path / name
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(self.staging / name, target)
        for name in stale - set(products):
            target = self.path / name
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
        tmp = self.path / f".{MANIFEST_NAME}.{os.getpid()}.part"
        tmp.write_text(manifest + "\n")
        os.replace(tmp, self.path / MANIFEST_NAME)
        swap.remove_tree(self.staging)

    # ----------------------------------------------------------------------------- abort
    def abort(self) -> None:
        """Remove the staging directory (or, after the exchange, the old tree), release the
        lock; ``OUTDIR`` keeps what it held."""
        global _last_outcome
        if self._done:
            return
        with critical():
            self._done = True
            swap.remove_tree(self.staging)
            if self._swapped:
                _last_outcome = f"{self.path} holds the complete new result"
            elif self.path.is_dir() and not self._had_result:
                _last_outcome = f"nothing written to {self.path}"
            else:
                _last_outcome = f"nothing written; {self.path} keeps its previous result"
            self._release()
            self._remove_if_created()

    def _release(self) -> None:
        with _active_lock:
            if _active.get(_key(self.path)) is self:
                del _active[_key(self.path)]
        if self._lock_info is not None:
            with contextlib.suppress(OSError):
                release_lock(self.lock, self._lock_info)
            self._lock_info = None

    def _remove_if_created(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if empty


def _identity(path: Path) -> tuple[int, int] | None:
    """Inode and modification time of ``path`` (None: absent): tells a replaced file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _os_error(path: Path, exc: OSError) -> InputError:
    if exc.errno in _DISK_FULL:
        return disk_full(path, None)
    return InputError(path, f"cannot be written ({exc.strerror or exc})",
                      "choose an output directory you can write to")


def disk_full(path: Path, needs_bytes: int | None) -> InputError:
    """The one-line error for ENOSPC/EDQUOT in ``path`` (free: once the partial result went)."""
    try:
        st = os.statvfs(path if path.exists() else path.parent)
        free = f"{_size(st.f_bavail * st.f_frsize)} free"
    except OSError:
        free = ""
    need = f"the result needs about {_size(needs_bytes)}" if needs_bytes else ""
    detail = "; ".join(x for x in (need, free) if x)
    return InputError(path, "ran out of space (file system full or quota reached) while "
                      f"writing{f' ({detail})' if detail else ''}; nothing was written",
                      "free some space or choose another output directory")


# ------------------------------------------------------------------------------- the API
def claim(outdir: str | Path, products: Iterable[str] = (), *, job: str,
          overwrite: bool = False, needs_bytes: int | None = None,
          command: str | None = None,
          overwrite_hint: str = "pass --overwrite to replace it") -> OutputDir:
    """Lock ``outdir`` for this job and return where to write its result.

    Must run inside a :func:`transaction` (which commits on success, aborts on any
    exception). A claim of a directory that an enclosing transaction of this process holds
    joins it if in the same thread (e.g. ``class-averages --select`` claims early, then
    :meth:`~csplugin.averaging.sources.ClassAvgSource.save` writes into the same staging).

    Parameters
    ----------
    outdir
        The output directory (created, parents too).
    products
        File names the job will write, for the refusal without ``overwrite``. The result is
        whatever the staging directory holds at commit, so files added later are included.
    job
        Name of the job in the manifest; its previous result there is replaced as a whole.
    needs_bytes
        Expected size of the result, if known: refused before any work when the file system
        has less free, and named in the disk-full message.
    """
    scopes = _scopes.get()
    if not scopes:
        raise RuntimeError("claim() must run inside csplugin.outputs.directory.transaction()")
    key = _key(Path(outdir))
    with _active_lock:
        held = _active.get(key)
    if held is not None and held.thread == threading.get_ident():  # else: refused by the lock
        scopes[-1].append((held, False))
        return held
    out = OutputDir(Path(outdir), job, command)
    out.needs_bytes = needs_bytes
    with critical():  # an interrupt lands before or after, never between
        out.open(products, overwrite, overwrite_hint)
        with _active_lock:
            _active[key] = out
        scopes[-1].append((out, True))
    return out


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Scope of :func:`claim`: commit its directories on success, abort them on any exception
    (ENOSPC/EDQUOT become :func:`disk_full`). Also a decorator: ``@transaction()``."""
    claimed: list[tuple[OutputDir, bool]] = []
    token = _scopes.set((*_scopes.get(), claimed))
    try:
        yield
    except BaseException as exc:
        _scopes.reset(token)
        for out, owned in reversed(claimed):
            if owned:
                out.abort()
            else:
                out.failed = True
        full = isinstance(exc, OSError) and exc.errno in _DISK_FULL
        if full and claimed:
            out = claimed[0][0]
            raise disk_full(out.path, out.needs_bytes) from None
        raise
    _scopes.reset(token)
    owned = [out for out, mine in claimed if mine]
    try:
        for out in owned:
            if out.failed:
                raise RuntimeError(f"a step writing into {out.path} failed; not committed")
            out.commit()
    except BaseException as exc:
        for out in owned:
            out.abort()
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            raise disk_full(owned[0].path, owned[0].needs_bytes) from None
        raise


def final_path(path: str | Path) -> Path:
    """``path`` with a staging directory of this process replaced by its ``OUTDIR`` (so that
    files name each other where they will be); other paths unchanged."""
    path = Path(path)
    absolute = path.absolute()
    with _active_lock:
        dirs = list(_active.values())
    for out in dirs:
        try:
            rel = absolute.relative_to(out.staging.absolute())
        except ValueError:
            continue
        return out.path.absolute() / rel
    return path


@contextlib.contextmanager
def single_file(path: str | Path, *, overwrite: bool = False,
                overwrite_hint: str = "pass --overwrite to replace it") -> Iterator[Path]:
    """Lock one output file (``PARENT/.NAME.csplugin.lock``), remove the ``.NAME.*.part``
    files of dead runs, refuse an existing file without ``overwrite``; yield ``path``, which
    the caller writes atomically (:func:`formats.atomic.atomic_output`)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory", "give a file name as the output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(path.parent, exc) from None
    lock = path.parent / f".{path.name}.csplugin.lock"
    with critical():
        try:
            info = acquire_lock(lock)
        except OSError as exc:
            raise _os_error(path.parent, exc) from None
    try:
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
            stale.unlink(missing_ok=True)
        if os.path.lexists(path) and not overwrite:
            raise InputError(path, "already exists", overwrite_hint)
        before = _identity(path)
        try:
            yield path
        except BaseException as exc:
            global _last_outcome
            _last_outcome = (f"{path} was written completely" if _identity(path) != before
                             else f"nothing written; {path} keeps its previous content"
                             if before else f"nothing written to {path}")
            if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
                raise disk_full(path.parent, None) from None
            raise
    finally:
        with critical():
            release_lock(lock, info)
