"""Figures drawn by processes of their own, beside the job's maths and its other outputs.

matplotlib spends its time in Python (ticks, text layout, Agg), holding the GIL: drawing a
figure takes ~0.15-0.25 s of one core, and importing matplotlib ~0.3-0.5 s, whatever the
number of cores. A job that draws several figures at its end (the power spectra: the pooled
and camera-frame spectra and one per class) would leave every other core idle meanwhile.
:class:`FigureProcess` forks drawing processes when the job starts (before the job's
thread pools exist, so the fork copies none of their state), which import matplotlib while
the maths runs and then draw what the job hands them while it writes its other outputs.

Drawing functions are called as ``draw(function, *args)`` (or ``draw.submit`` for a
result) with picklable, module-level functions and arguments (arrays go through a pipe:
~1 ms per MB); a job may hand over more than drawing, e.g. the indexing of a class, which
its figure needs anyway. Where ``fork`` is not
available, or ``CSPLUGIN_FIGURE_PROCESSES=0``, figures are drawn in the job's own thread
at the call, with the same results.

Lifetime: :meth:`FigureProcess.close` (the ``with`` block's end) waits for every figure and
raises the first drawing error in the job; on an error or interrupt of the job, queued
figures are dropped and the processes end. The processes ignore Ctrl-C (the job handles it
and ends them) and are killed by the kernel if the job dies (``PR_SET_PDEATHSIG``), so a
killed job leaves no process drawing into its staging directory.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from csplugin.core.threads import cores

__all__ = ["FigureProcess", "figure_processes"]

_PR_SET_PDEATHSIG = 1
#: Calls waiting per drawing process at most (see :meth:`FigureProcess.submit`).
QUEUED = 4
R = TypeVar("R")


def figure_processes() -> int:
    """Drawing processes: ``CSPLUGIN_FIGURE_PROCESSES``, else one per 4 cores, 1 to 4."""
    value = os.environ.get("CSPLUGIN_FIGURE_PROCESSES", "").strip()
    if value.isdigit():
        return int(value)
    return max(1, min(4, cores() // 4))


#: Signals the job turns into exceptions (csplugin.outputs.signals), held while it forks.
_HELD = {signal.SIGINT, signal.SIGTERM}


def _start_child() -> None:
    """In each drawing process: die with the job, leave Ctrl-C and SIGTERM to the job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)  # held by the job while it forked
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the job died between the fork and the prctl
            os._exit(1)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _import_matplotlib() -> None:
    """Warm-up task: the first figure then costs only its drawing."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


class FigureProcess:
    """Draw figures in forked processes (see the module docstring); a context manager.

    Parameters
    ----------
    processes
        Number of drawing processes (default :func:`figure_processes`); 0 draws inline.
    """

    def __init__(self, processes: int | None = None) -> None:
        n = figure_processes() if processes is None else processes
        self._processes = n
        self._pool: ProcessPoolExecutor | None = None
        self._futures: list[Future[Any]] = []
        if n > 0 and "fork" in multiprocessing.get_all_start_methods():
            # Ctrl-C or SIGTERM during the fork would raise in os.fork's at-fork handlers,
            # where Python drops the exception (the job would run on): hold them meanwhile,
            # they are delivered right after, at a point where they stop the job
            held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
            try:
                self._pool = ProcessPoolExecutor(
                    n, mp_context=multiprocessing.get_context("fork"), initializer=_start_child)
                for _ in range(n):  # forks now, while the job has no threads yet
                    self._futures.append(self._pool.submit(_import_matplotlib))
            finally:
                try:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held signal raises here
                except BaseException:
                    if self._pool is not None:
                        self._pool.shutdown(wait=False, cancel_futures=True)
                    raise

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Draw ``function(*args, **kwargs)`` (its return value is dropped)."""
        if self._pool is None:
            function(*args, **kwargs)  # an error is raised here
        else:
            self.submit(function, *args, **kwargs)

    def submit(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> Future[R]:
        """Run ``function(*args, **kwargs)`` in a drawing process (or here, now, without
        one); its future. At most :data:`QUEUED` calls per process wait at once (the call
        waits for the oldest), so their arguments do not pile up in the job's memory."""
        if self._pool is None:
            done: Future[R] = Future()
            try:
                done.set_result(function(*args, **kwargs))
            except Exception as error:  # raised by close() and result(), as from a process
                done.set_exception(error)
            return done
        waiting = [f for f in self._futures if not f.done()]
        while len(waiting) >= QUEUED * self._processes:
            waiting.pop(0).result()
            waiting = [f for f in waiting if not f.done()]
        future = self._pool.submit(function, *args, **kwargs)
        self._futures.append(future)
        return future

    def close(self) -> None:
        """Wait for every figure; raise the first error of a drawing function."""
        if self._pool is None:
            return
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._futures.clear()

    def __enter__(self) -> FigureProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self.close()
        elif self._pool is not None:  # the job failed: drop what is queued, end the processes
            for future in self._futures:
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
