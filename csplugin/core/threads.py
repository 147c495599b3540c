"""How many threads the maths may use: one setting for numba kernels, FFTs and readers."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def threads() -> int:
    """Threads for FFTs and kernels: ``CSPLUGIN_THREADS``, else ``NUMBA_NUM_THREADS``, else
    the cores this process may use (``os.sched_getaffinity``, so ``taskset`` counts)."""
    for name in ("CSPLUGIN_THREADS", "NUMBA_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return cores()


def cores() -> int:
    """CPU cores this process may use (``os.sched_getaffinity``, so ``taskset`` counts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def serial_kernels() -> None:
    """Make the calling thread's numba kernels run on one thread (numba's setting is per
    thread): for worker threads that each take whole tasks, so that ``T`` workers use ``T``
    cores instead of ``T²`` threads."""
    import numba

    numba.set_num_threads(1)


class _SharedPool(ThreadPoolExecutor):
    """A pool that lives as long as the process (its threads end with the interpreter):
    ``shutdown`` and the ``with`` block's end do nothing."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing: the pool is shared (see :func:`worker_pool`)."""


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_worker = threading.local()


def _start_worker() -> None:
    serial_kernels()
    _worker.active = True


def in_worker() -> bool:
    """Whether the calling thread is one of the :func:`worker_pool` threads."""
    return getattr(_worker, "active", False)


def worker_pool(workers: int | None = None) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads (default :func:`threads`) for whole tasks,
    each running its numba kernels serially (:func:`serial_kernels`). Shared by every job of
    the process and kept (idle threads cost nothing), so its threads keep their FFT plans and
    scratch buffers from task to task and job to job. Its ``shutdown`` does nothing; callers
    wait for their own futures (:func:`settle`)."""
    n = workers or threads()
    with _pools_lock:
        pool = _pools.get(n)
        if pool is None:
            pool = _pools[n] = _SharedPool(max_workers=n, initializer=_start_worker,
                                           thread_name_prefix=f"csplugin-worker-{n}")
        return pool


def settle(futures: Iterable[Future[object]]) -> None:
    """Cancel those of ``futures`` not started and wait for the others (after an error or
    an interrupt: nothing of the caller's runs on once it returns)."""
    futures = list(futures)
    for future in futures:
        future.cancel()
    wait(futures)


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                ahead: int = 2) -> Iterator[R]:
    """``function(item)`` for every item on ``workers`` threads of the :func:`worker_pool`
    (default :func:`threads`); results in the order of ``items``, with at most
    ``ahead * workers`` items in flight (bounded memory).

    Tasks should spend their time where the GIL is released (numba ``nogil`` kernels, FFTW,
    file reads), as csplugin's kernels do. An exception of ``function`` is raised at its
    item; queued items are then dropped. With one worker, or called from a worker thread
    (no task waits for tasks queued behind it), runs in the calling thread.
    """
    n = workers or threads()
    if n <= 1 or in_worker():
        yield from map(function, items)
        return
    pool = worker_pool(n)
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= ahead * n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # done, failed, or the consumer stopped early: drop what is queued
        settle(pending)
