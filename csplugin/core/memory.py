"""Memory of the jobs: per-thread scratch buffers, and freed heap memory returned to the
operating system between the passes of a job."""

from __future__ import annotations

import ctypes
import functools
import math
import threading

import numpy as np
from numpy.typing import DTypeLike

#: glibc's ``mallopt`` parameter for the number of malloc arenas (``malloc.h``).
_M_ARENA_MAX = -8


@functools.cache
def _libc(name: str):  # glibc only; None elsewhere (macOS, musl)
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def limit_arenas(count: int = 2) -> None:
    """Let the threads created from now on share at most ``count`` malloc arenas (glibc
    ``mallopt(M_ARENA_MAX)``, as ``MALLOC_ARENA_MAX``; process-wide; a no-op elsewhere).

    By default glibc gives each thread that allocates its own arena, up to 8 per core, and
    each keeps what its thread freed: at 16 threads (FFTW, numba, readers) the power-spectrum
    job's peak grew from ~515 to ~685 MB; with 2 arenas it was ~585 MB and no slower (its hot
    kernels allocate nothing, so sharing arenas costs no measurable contention). At 2 threads
    the limit did not help (~540 MB with it, ~515 MB without), so jobs call it from 5 threads.
    """
    mallopt = _libc("mallopt")
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, count)


def release_free_memory() -> None:
    """Give the pages of freed heap blocks back to the OS (glibc ``malloc_trim(0)``).

    Reading chunks (16 MB arrays, allocated in reader threads) and the other temporaries of a
    pass leave freed memory in glibc's arenas that the next pass does not always reuse; in the
    power-spectrum job at box 256 this grew the resident size by up to 190 MB per pass. A
    call costs well under a millisecond; a no-op where the C library has no such function.
    """
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)


_scratch = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: DTypeLike = np.float32) -> np.ndarray:
    """A C-contiguous array of ``shape`` and ``dtype`` (undefined contents) in a buffer of
    the calling thread's own, reused by its later calls with the same ``name``.

    For worker threads that take one task after another: a fresh array per task means fresh
    pages (a fault per 4 KiB) and, freed, an ``munmap`` that interrupts every other thread of
    the process (TLB shootdown); reusing one costs neither. An export of 256² images with
    fresh 4 MiB arrays per task spent more time in the kernel than in the maths. The array is
    valid until the thread's next call with ``name``: use it within the task, never hand it
    on. The buffer grows as needed and is freed when the thread ends.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.size < size:
        buffer = buffers[name] = np.empty(size, np.uint8)
    return buffer[:size].view(dtype).reshape(shape)
