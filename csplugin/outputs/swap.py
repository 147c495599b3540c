"""File-system steps of the swap in :mod:`csplugin.outputs.directory`: exchange two
directories atomically, carry entries over by hard links, remove a tree."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import time
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
except (AttributeError, OSError):  # not glibc >= 2.28
    _renameat2 = None


def exchange(a: Path, b: Path) -> bool:
    """Swap directories ``a`` and ``b`` atomically (``renameat2(RENAME_EXCHANGE)``).

    Returns False, having done nothing, where the system or file system cannot (the caller
    then renames twice); other failures raise OSError.
    """
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def carry(src: Path, dst: Path) -> None:
    """Hard-link (else copy) ``src`` to ``dst``, directories recursively, links as links."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for entry in os.scandir(src):
            carry(Path(entry.path), dst / entry.name)
        shutil.copystat(src, dst)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def remove_tree(path: Path) -> None:
    """Remove ``path``; a few tries (a Dask task may still be closing a file in it), then
    leave it as debris for the next run."""
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.05)
