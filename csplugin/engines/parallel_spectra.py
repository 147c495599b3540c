"""Power spectra of many particles on every core: each worker thread reads, conditions,
transforms and accumulates whole psi bins of its own (pure engine: images come from a
``read`` callable, no file I/O here).

Why threads each doing everything, rather than one FFT or kernel call parallelised over the
cores at a time: a 256² image costs ~44 µs to read, ~55 µs to transform (pad 1) and
~15-60 µs to add into its bin; parallelising each step across the cores means a fork and a
join per small batch and one core reading while the others wait, whereas ``T`` threads
that each take a task from start to end keep all ``T`` cores on the maths (FFTW plans of
one thread, numba kernels at one thread in the worker, :func:`numba.set_num_threads` being
per thread), and their reads overlap each other's maths.

Tasks never share a bin: the particles are grouped by (accumulator, psi bin) and a task is
a run of whole groups, so no two threads add into the same memory and no locks are needed.
Within a bin, particles are added in ascending position, whatever the number of threads:
the result is the same bit for bit at 1 and at 64 threads, and equals
:func:`csplugin.engines.power_spectrum.add_spectra` over the particles sorted by bin.
A task's bins (a few) stay in the worker's caches while it adds its particles, where the
particles of a chunk in file order land in a new, cold bin each. A task is read
:data:`PIECE_BYTES` at a time into the worker's own scratch buffer, so a thread's memory is
bounded however many particles a bin holds. Measured (12,000 x 256², 3 classes, one thread):
160 µs per particle at pad 1, 426 at pad 2 with mask and normalisation; 1 -> 2 threads with
a serial fraction of 0.07-0.12 (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from csplugin.core.memory import scratch
from csplugin.core.threads import ordered_map
from csplugin.engines.power_spectrum import PowerSpectrumAccumulator, add_spectra

__all__ = ["PIECE_BYTES", "TASK_PARTICLES", "accumulate_in_parallel", "tasks_by_bin"]

#: Particles per task, about (whole bins, so a task may hold more): small enough to balance
#: the threads and keep a task's images (8 MB at 256²) in memory, large enough that the
#: Python work per task is a small share.
TASK_PARTICLES = 32
#: Bytes of images a worker reads at once (a task of whole bins is read in such pieces, in
#: order): memory per thread is bounded whatever the particles per bin (2 MiB: 8 at 256²).
PIECE_BYTES = 2 << 20
#: Bytes of FFT output per batch in a worker: stays in a core's L2 cache for the addition.
_WORKER_BATCH_BYTES = 1 << 20

class Read(Protocol):
    """``read(positions, out)`` -> ``out[:k]`` filled with the raw images ``(k, N, N)``."""

    def __call__(self, rows: NDArray[np.int64], out: NDArray[np.float32]
                 ) -> NDArray[np.float32]: ...



OnImages = Callable[[NDArray[np.int64], NDArray[np.float32]], None]
Prepare = Callable[[NDArray[np.int64], NDArray[np.float32]], NDArray[np.float32]]


def tasks_by_bin(owners: NDArray[np.int64], bins: NDArray[np.int64], n_bins: int,
                 size: int = TASK_PARTICLES) -> list[NDArray[np.int64]]:
    """Cut the particles with ``owners >= 0`` into tasks of whole (owner, bin) groups.

    Parameters
    ----------
    owners, bins : ndarray, shape (n,), int
        Accumulator (negative: none) and psi bin of each particle.
    n_bins
        Bins per accumulator.
    size
        Particles per task, about: a task closes at the first group boundary at or past it.

    Returns
    -------
    list of ndarray
        Positions, ascending within each task; every position with an owner in exactly one
        task, and every (owner, bin) group in exactly one task.
    """
    keep = np.flatnonzero(owners >= 0)
    if keep.size == 0:
        return []
    key = owners[keep] * n_bins + bins[keep]
    order = keep[np.argsort(key, kind="stable")]  # by group, ascending position within
    sorted_key = owners[order] * n_bins + bins[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    cuts, last = [], 0
    for start in group_starts[1:]:
        if start - last >= size:
            cuts.append(start)
            last = start
    return [np.sort(part) for part in np.split(order, cuts)]


def accumulate_in_parallel(accumulators: list[PowerSpectrumAccumulator], owners: ArrayLike,
                           angles: ArrayLike, read: Read, *, also: ArrayLike | None = None,
                           on_images: OnImages | None = None, prepare: Prepare | None = None,
                           n_threads: int | None = None, task_particles: int = TASK_PARTICLES,
                           progress: Callable[[int], None] | None = None) -> None:
    """Add particles to accumulators of the same settings on ``n_threads`` threads.

    Parameters
    ----------
    accumulators
        As for :func:`csplugin.engines.power_spectrum.add_spectra` (equal settings).
    owners : array_like, shape (n,), int
        Accumulator index of each particle; negative: not added.
    angles : array_like, shape (n,)
        In-plane angles in radians.
    read
        ``read(positions, out)`` -> ``out`` ``(k, N, N)`` float32 filled with the raw images
        of those positions (ascending, at most :data:`PIECE_BYTES` of images); called from
        the worker threads with a buffer of each thread's own
        (:func:`csplugin.core.memory.scratch`), so it must be thread-safe.
    also : array_like, shape (n,), bool, optional
        Particles without an owner to read all the same, for ``on_images`` only.
    on_images
        ``on_images(positions, images)`` for every set of images read (raw, before
        ``prepare``), from the worker threads: thread-safe, and cheap or GIL-free.
    prepare
        ``prepare(positions, images)`` -> the images to transform (e.g. a per-particle mask,
        already normalised: the accumulators then condition nothing); from the workers.
    n_threads
        Worker threads of the process's :func:`csplugin.core.threads.worker_pool` (default
        :func:`csplugin.core.threads.threads`; its threads keep their FFT plans and buffers
        from call to call).
    task_particles
        Particles per task, about (:func:`tasks_by_bin`).
    progress
        Called (from the calling thread) with the number of particles added by each task.

    The first exception of a worker is raised here once the running tasks have stopped.
    """
    if not accumulators:
        raise ValueError("no accumulators")
    owners = np.asarray(owners, dtype=np.int64)
    angles = np.asarray(angles, dtype=np.float64)
    if owners.shape != angles.shape or owners.ndim != 1:
        raise ValueError(f"need owners and angles of one shape (n,), got {owners.shape}, "
                         f"{angles.shape}")
    first = accumulators[0]
    tasks = [(rows, True) for rows in
             tasks_by_bin(owners, first.psi_bins(angles), first.n_bins, task_particles)]
    if also is not None:
        extra = np.flatnonzero(np.asarray(also, bool) & (owners < 0))
        tasks += [(rows, False) for rows in np.array_split(
            extra, -(-len(extra) // task_particles))] if len(extra) else []
    m = first.size
    batch = max(1, _WORKER_BATCH_BYTES // (8 * m * (m // 2 + 1)))
    batch = 1 << (batch.bit_length() - 1)

    box = first.box
    piece = max(1, PIECE_BYTES // (4 * box * box))

    def work(task: tuple[NDArray[np.int64], bool]) -> int:
        rows_all, add = task
        for start in range(0, len(rows_all), piece):  # a bin may hold any number of particles
            rows = rows_all[start:start + piece]
            images = read(rows, scratch("spectra_raw", (len(rows), box, box)))
            if on_images is not None:
                on_images(rows, images)
            if not add:
                continue
            if prepare is not None:
                images = prepare(rows, images)
            add_spectra(accumulators, images, angles[rows], owners[rows], n_threads=1,
                        batch=batch, count=False)
        return len(rows_all) if add else 0

    # tasks touch disjoint bins, so the order they finish in does not matter; a worker's
    # error is raised here once the running tasks have stopped (ordered_map settles them)
    for done in ordered_map(work, tasks, n_threads):
        if progress is not None and done:
            progress(done)
    for a in np.unique(owners[owners >= 0]):
        accumulators[a].count(angles[owners == a])
