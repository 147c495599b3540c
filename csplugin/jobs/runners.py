"""How a job's independent pieces run: in this process (:class:`SerialRunner`) or elsewhere.

A job that can be split (one output stack, one class, one block of psi bins) calls
``runner.map(function, tasks, sizes, progress)``: ``function(*task, progress)`` for every
task, results yielded **in task order**. ``sizes`` are the particles each task handles, for
progress reporting by runners whose tasks cannot call ``progress`` themselves.
:class:`csplugin.app.dask.DaskRunner` runs the same functions on a Dask cluster; this
module imports nothing from Dask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from csplugin.core.particles import ParticleTable
    from formats.mrc import Stack

T = TypeVar("T")
Progress = Callable[[int], None]


class TaskRunner(Protocol):
    """Runs independent job pieces and yields their results in order."""

    def map(self, function: Callable[..., T], tasks: Iterable[tuple[Any, ...]],
            sizes: Iterable[int], progress: Progress | None = None) -> Iterator[T]:
        """``function(*task, progress)`` for each task, results in task order."""
        ...


class SerialRunner:
    """Run every task here, one after the other, passing ``progress`` through."""

    def map(self, function: Callable[..., T], tasks: Iterable[tuple[Any, ...]],
            sizes: Iterable[int], progress: Progress | None = None) -> Iterator[T]:
        """``function(*task, progress)`` for each task in turn (``sizes`` unused)."""
        for task in tasks:
            yield function(*task, progress)


def task_table(table: ParticleTable, rows: np.ndarray) -> ParticleTable:
    """The particles at positions ``rows`` with only the normalised columns: what an image
    task needs (the input's own rows, often hundreds of bytes each, stay behind)."""
    return replace(table, particles=table.particles.iloc[rows].reset_index(drop=True),
                   native=table.native[:0])


def used_stacks(table: ParticleTable, rows: np.ndarray, stacks: dict[str, Stack]
                ) -> dict[str, Stack]:
    """The entries of ``stacks`` that the particles at ``rows`` refer to."""
    return {path: stacks[path] for path in table.particles["stack"].iloc[rows].unique()}
