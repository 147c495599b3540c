"""Stream the particle images of a table in bounded chunks.

Every job reads particles the same way: check once that every stack exists and holds every
referenced index (so a job fails before writing anything), then read ``(k, N, N)`` float32
chunks in table order, the next chunk prefetched on a background thread while the caller
works on the current one. Memory is bounded by two chunks whatever the particle count.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from csplugin.core.threads import threads
from formats import InputError
from formats.mrc import Stack, open_stack

#: Bytes of float32 images per chunk (64 images of 256², 256 of 128²); two or three chunks
#: are in flight at once (being read, being processed, being written).
CHUNK_BYTES = 16 << 20
#: First bytes of a Git LFS pointer file (the same as :data:`csplugin.core.identify.LFS_MAGIC`;
#: images.py imports nothing from the table modules).
_LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"


class ParticleTable(Protocol):
    """What reading images needs of a :class:`csplugin.core.particles.ParticleTable` (which
    imports this module, so it is described here rather than imported)."""

    particles: pd.DataFrame
    source: Path

    @property
    def box(self) -> int: ...

    def missing_stacks(self) -> list[str]: ...

    def __len__(self) -> int: ...


class Reader(Protocol):
    """Images of table positions: see :func:`reader`."""

    def __call__(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...


def check_stacks(table: ParticleTable) -> dict[str, Stack]:
    """Open every stack the table references and check its indices and box size.

    Returns
    -------
    dict
        Absolute stack path -> :class:`~formats.mrc.Stack`.

    Raises
    ------
    InputError
        A missing stack, an index past the end of a stack, or a box that differs from the
        metadata.
    """
    if len(table) == 0:
        raise InputError(table.source, "selects no particles",
                         "check --classes against `csplugin info` (0-based for .cs, 1-based "
                         "for .star)")
    missing = table.missing_stacks()
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(missing[0], f"particle stack not found{more} (referenced by "
                         f"{table.source})",
                         "pass --project-dir (the directory the stack paths start from)")
    p = table.particles
    stacks = {path: _open(path) for path in p["stack"].unique()}
    last = p.groupby("stack")["stack_index"].max()
    for path, index in last.items():
        if index >= stacks[path].n:
            raise InputError(path, f"has {stacks[path].n} images but {table.source} refers to "
                             f"image {index} (0-based)",
                             "check that the metadata matches the stacks")
    for path in _volumes(p, stacks):
        raise InputError(path, f"holds {stacks[path].n} sections and {table.source} names it "
                         "without N@, so it is one 3D volume (as RELION reads it); "
                         "csplugin handles 2D single-particle images only",
                         "pass 2D particle images (N@stack names)")
    boxes = p.groupby("stack")["box"].first()
    for path, box in boxes.items():
        if stacks[path].box != (box, box):
            raise InputError(path, f"holds {stacks[path].box} images, the metadata says {box} px",
                             "check that the metadata matches the stacks")
    return stacks


@dataclass(frozen=True)
class StackProblem:
    """One thing wrong with a stack a table references (what ``csplugin info`` lists).

    Attributes
    ----------
    stack
        Absolute stack path.
    kind
        ``"missing"``, ``"unreadable"`` (truncated, corrupt or compressed file, a header that
        does not describe the data, a Git LFS pointer), ``"index past end"`` or
        ``"box mismatch"``.
    message
        One line saying what is wrong and how many particles it concerns.
    particles
        Number of particles affected.
    """

    stack: str
    kind: str
    message: str
    particles: int


def audit_stacks(table: ParticleTable) -> list[StackProblem]:
    """Check every stack the table references, listing every problem instead of raising.

    Each stack is opened with the same header and size checks as the jobs use
    (:func:`formats.mrc.open_stack`); every index is checked against the stack's image count
    and the box against the metadata. An empty list means every job can read every image.
    """
    p = table.particles
    problems: list[StackProblem] = []
    if len(p) == 0:
        return problems
    counts = p.groupby("stack").size()
    last = p.groupby("stack")["stack_index"].max()
    boxes = p.groupby("stack")["box"].first()
    for path in sorted(counts.index):
        n = int(counts[path])
        if not Path(path).is_file():
            problems.append(StackProblem(path, "missing", "not found", n))
            continue
        try:
            stack = _open(path)
        except InputError as exc:
            problems.append(StackProblem(path, "unreadable", exc.problem, n))
            continue
        if last[path] >= stack.n:
            mine = p["stack_index"][p["stack"] == path]
            past = int((mine >= stack.n).sum())
            problems.append(StackProblem(
                path, "index past end", f"holds {stack.n} images but {past} particle(s) refer to "
                f"images up to {int(last[path])} (0-based)", past))
        if path in _volumes(p, {path: stack}):
            problems.append(StackProblem(
                path, "3D volume", f"holds {stack.n} sections and is named without N@: one 3D "
                "volume, as RELION reads it (csplugin handles 2D images only)", n))
            continue
        if stack.box != (boxes[path], boxes[path]):
            problems.append(StackProblem(
                path, "box mismatch", f"holds {stack.box[1]}x{stack.box[0]} images, the metadata "
                f"says {boxes[path]} px", n))
    return problems


def _volumes(p: pd.DataFrame, stacks: dict[str, Stack]) -> list[str]:
    """Stacks referenced by a name without ``N@`` (the ``whole_file`` column of a ``.star``
    input) that hold more than one section: RELION reads each such file as one 3D volume."""
    if "whole_file" not in p or not p["whole_file"].any():
        return []
    named = set(p.loc[p["whole_file"].to_numpy(bool), "stack"])
    return sorted(path for path in named if path in stacks and stacks[path].n > 1)


def _open(path: str) -> Stack:
    """:func:`formats.mrc.open_stack`, with a Git LFS pointer named as such."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        if f.read(len(_LFS_MAGIC)) == _LFS_MAGIC:
            raise InputError(path, "is a Git LFS pointer, not the stack (its content was never "
                             "downloaded)", "run `git lfs pull` where it came from")
    return open_stack(path)


def open_class_averages(path: str | Path, class_index: np.ndarray, box: int) -> Stack:
    """Open a stack of a job's own class averages (cryoSPARC ``J##_class_averages.mrc``,
    RELION ``_classes.mrcs``: slice = 0-based class index) and check that it fits.

    Raises
    ------
    InputError
        Images of another size than the particles' ``box``, or fewer slices than the
        largest of ``class_index`` (0-based) needs.
    """
    stack = open_stack(path)
    if stack.box != (box, box):
        raise InputError(path, f"holds {stack.box} images, the particles are {box} px",
                         "pass the class averages of the same job")
    if len(class_index) and int(np.max(class_index)) >= stack.n:
        raise InputError(path, f"has {stack.n} images but class index "
                         f"{int(np.max(class_index))} (0-based) is needed",
                         "pass the class averages of the same job")
    return stack


def read_chunk(table: ParticleTable, rows: np.ndarray, stacks: dict[str, Stack]) -> np.ndarray:
    """Images ``(k, N, N)`` float32 of the particles at table positions ``rows`` (``(k,)``)."""
    p = table.particles
    return _read(p["stack"].to_numpy()[rows], p["stack_index"].to_numpy()[rows], stacks,
                 int(p["box"].iloc[rows[0]]))


def reader(table: ParticleTable, stacks: dict[str, Stack]) -> Reader:
    """``read(rows, out=None)`` -> images ``(k, N, N)`` float32 of the table positions
    ``rows`` (into ``out`` if given: a buffer used again costs no page faults, ~45 µs per
    256² image in fresh memory), like :func:`read_chunk` with the table's columns taken
    once; thread-safe (each call opens the stacks it reads)."""
    p = table.particles
    stack_col, index_col = p["stack"].to_numpy(), p["stack_index"].to_numpy()
    box = table.box()

    def read(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return _read(stack_col[rows], index_col[rows], stacks, box, out)

    return read


def _read(stack_col: np.ndarray, index_col: np.ndarray, stacks: dict[str, Stack], box: int,
          out: np.ndarray | None = None) -> np.ndarray:
    """Images ``(k, N, N)`` float32 for ``(k,)`` stack paths and 0-based indices."""
    if out is None:
        out = np.empty((len(stack_col), box, box), np.float32)
    if len(stack_col) and (stack_col[0] == stack_col).all():  # the common case: one stack
        stacks[stack_col[0]].read(index_col, out=out)
    else:
        for path in np.unique(stack_col):
            mine = np.flatnonzero(stack_col == path)
            if mine[-1] - mine[0] + 1 == len(mine):  # the usual case: read in place
                stacks[path].read(index_col[mine], out=out[mine[0]:mine[-1] + 1])
            else:
                out[mine] = stacks[path].read(index_col[mine])
    finite = np.isfinite(out).all(axis=(1, 2))
    if not finite.all():
        j = int(np.flatnonzero(~finite)[0])
        raise InputError(stack_col[j], f"image {index_col[j]} (0-based) contains NaN or "
                         "infinite pixels", "re-extract that particle or leave it out")
    return out


#: Bytes of images that all worker threads' tasks may hold at once (see :func:`task_images`).
TASKS_BYTES = 128 << 20


def task_images(box: int, arrays: int = 2, ahead: int = 2) -> int:
    """Images per task of the worker threads: all threads' tasks in flight (``ahead`` per
    thread, each holding ``arrays`` image-sized float32 arrays) within :data:`TASKS_BYTES`,
    at least 1 and at most :func:`chunk_size_for` ``box`` (64 at 256² and 2 threads, 8 at 16
    threads)."""
    per = TASKS_BYTES // (ahead * threads() * arrays * 4 * box * box)
    return max(1, min(chunk_size_for(box), per))


def chunk_size_for(box: int) -> int:
    """Images per chunk: about CHUNK_BYTES of float32, at least 16."""
    return max(16, CHUNK_BYTES // (4 * box * box))


def iter_chunks(table: ParticleTable, chunk_size: int | None = None,
                stacks: dict[str, Stack] | None = None, segment: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(rows, images)`` over the table in order, ``images`` ``(k, N, N)`` float32.

    ``rows`` are table positions ``(k,)``; the next chunks are read (:func:`reader_threads`
    at once, in order) while the caller works.
    ``chunk_size`` defaults to :func:`chunk_size_for` the table's box. With ``segment``, no
    chunk crosses a multiple of ``segment`` (e.g. the boundary between output stacks).
    """
    stacks = check_stacks(table) if stacks is None else stacks
    if len(table) == 0:
        return
    box = int(table.particles["box"].iloc[0])
    chunk_size = chunk_size or chunk_size_for(box)
    stack_col = table.particles["stack"].to_numpy()
    index_col = table.particles["stack_index"].to_numpy()
    segment = segment or len(table)
    bounds = [(start, min(start + chunk_size, first + segment, len(table)))
              for first in range(0, len(table), segment)
              for start in range(first, min(first + segment, len(table)), chunk_size)]
    readers = reader_threads()
    with ThreadPoolExecutor(max_workers=readers) as pool:
        pending: deque[tuple[np.ndarray, Future[np.ndarray]]] = deque()
        for start, stop in bounds:
            rows = np.arange(start, stop)
            pending.append((rows, pool.submit(_read, stack_col[rows], index_col[rows], stacks,
                                              box)))
            if len(pending) > readers:  # `readers` chunks in flight ahead of the caller
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def reader_threads() -> int:
    """Chunks read at once: one per 4 compute threads (:func:`csplugin.core.threads.threads`),
    1 to 4. Reading (a copy out of the page cache, conversion, NaN check) costs about a
    quarter of the per-image maths of the lightest job, so on 2 cores one reader overlaps
    with the kernels without taking a core from them, and on 16 four keep them fed. Each
    reader holds one chunk (:data:`CHUNK_BYTES`)."""
    return max(1, min(4, threads() // 4))


class ParticleImages:
    """Read-only, on-demand access to the raw images of a table: ``table.images``.

    ``images[i]`` -> ``(N, N)``; ``images[i:j]``, ``images[[i, k, ...]]`` or a boolean mask
    -> ``(k, N, N)``; float32, in table order. Stacks are opened and checked
    (:func:`check_stacks`) on first use and kept in :attr:`stacks`. Nothing is cached
    but the stack headers: every access reads from disk (stream large tables with
    :func:`iter_chunks` instead of slicing everything).
    """

    def __init__(self, table: ParticleTable) -> None:
        self._table = table
        self._stacks: dict[str, Stack] | None = None

    @property
    def stacks(self) -> dict[str, Stack]:
        """Absolute stack path -> :class:`~formats.mrc.Stack`, checked once."""
        if self._stacks is None:
            self._stacks = check_stacks(self._table)
        return self._stacks

    def __len__(self) -> int:
        return len(self._table)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n, N, N)``."""
        box = self._table.box()
        return len(self._table), box, box

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        n = len(self._table)
        if isinstance(key, (int, np.integer)):
            if not -n <= key < n:
                raise IndexError(f"particle {key} out of range for {n} particles")
            return self[np.array([key % n])][0]
        rows = np.arange(n)[key]
        if rows.size == 0:
            box = self._table.box()
            return np.empty((0, box, box), np.float32)
        return read_chunk(self._table, rows, self.stacks)
