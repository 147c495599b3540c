"""SIGINT and SIGTERM during a job: exceptions in the main thread, held back while output
directories are committed or cleaned up (:mod:`csplugin.outputs.directory`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """``SIGTERM`` (e.g. SLURM's ``scancel``), raised in the main thread by
    :func:`interrupt_handlers`; handled like Ctrl-C, exit status 143 in the CLI."""


_critical_depth = 0
_pending_signal: int | None = None
_handlers_installed = False


def _raise_for(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


#: Code that C calls back into (llvmlite's object cache, while numba compiles): an exception
#: raised there is printed as "Exception ignored ..." and lost, so the signal is re-sent.
_CALLBACK_CODE = ("/llvmlite/",)
#: Seconds before such a signal is sent again.
RESEND_DELAY = 0.02


def _in_callback(frame: Any) -> bool:
    return frame is not None and any(part in frame.f_code.co_filename
                                     for part in _CALLBACK_CODE)


def _on_signal(signum: int, frame: Any) -> None:
    global _pending_signal
    if _critical_depth:
        _pending_signal = signum  # raised when the commit or clean-up is done
        return
    if _in_callback(frame):
        threading.Timer(RESEND_DELAY, os.kill, (os.getpid(), signum)).start()
        return
    _raise_for(signum)


@contextlib.contextmanager
def interrupt_handlers(*, final: bool = False) -> Iterator[None]:
    """Raise :class:`Terminated` on ``SIGTERM`` and :class:`KeyboardInterrupt` on ``SIGINT``
    in the main thread, both held back during commits and clean-ups (nothing is installed
    outside the main thread).

    ``final``: the process ends after this block (a command line's ``main``), so on leaving
    both signals are ignored rather than restored: a signal arriving once the command is
    done must not kill it silently (status -15) while it reports or exits.
    """
    global _handlers_installed
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    _handlers_installed = True
    try:
        yield
    finally:
        _handlers_installed = False
        for s, handler in old.items():
            signal.signal(s, signal.SIG_IGN if final else handler)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Hold back the signals of :func:`interrupt_handlers` (re-raised on leaving)."""
    global _critical_depth, _pending_signal
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if not _critical_depth and _pending_signal is not None:
            signum, _pending_signal = _pending_signal, None
            if _handlers_installed:
                _raise_for(signum)
