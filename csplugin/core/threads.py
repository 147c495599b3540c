"""How many threads the maths may use: one setting for numba kernels, FFTs and readers."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


def worker_pool(workers: int | None = None) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads (default :func:`threads`) for whole tasks, each running
    its numba kernels serially (:func:`serial_kernels`); kept for several rounds of tasks,
    its threads keep their FFT plans and scratch buffers."""
    return ThreadPoolExecutor(max_workers=workers or threads(), initializer=serial_kernels)


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                ahead: int = 2) -> Iterator[R]:
    """``function(item)`` for every item on ``workers`` threads (default :func:`threads`),
    each running its numba kernels serially (:func:`serial_kernels`); results in the order
    of ``items``, with at most ``ahead * workers`` items in flight (bounded memory).

    Tasks should spend their time where the GIL is released (numba ``nogil`` kernels, FFTW,
    file reads), as csplugin's kernels do. An exception of ``function`` is raised at its
    item; queued items are then dropped. With one worker, runs in the calling thread.
    """
    n = workers or threads()
    if n <= 1:
        yield from map(function, items)
        return

    pool = worker_pool(n)
    try:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= ahead * n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # done, failed, or the consumer stopped early: drop what is queued
        pool.shutdown(wait=True, cancel_futures=True)
