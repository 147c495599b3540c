"""Run csplugin's jobs on a Dask cluster (optional extra ``csplugin[dask]``).

The jobs cut their work into independent tasks and hand them to a
:class:`~csplugin.jobs.runners.TaskRunner`; :class:`DaskRunner` submits those same functions to a
``dask.distributed`` cluster:

================  ==============================  ===========================================
job               one task                        combined here
================  ==============================  ===========================================
export-aligned    one output stack                ``particles.star``/``.cs`` written once all
                  (:func:`~csplugin.jobs.         stacks exist; bit for bit the local stacks
                  export_aligned.export_stack`),
                  written by the
                  worker, atomically
power-spectrum    a block of whole psi bins of    blocks' :class:`~csplugin.engines.power_spectrum.
                  one class (:func:`~csplugin.     RotatedSums` added per class, classes
                  spectra.spectrum_block`)        pooled: equal to the local spectra within
                                                  float summation order (~1e-7 relative)
class-averages    one class (:func:`~csplugin.     averages stacked and written here; bit for
                  class_averages.average_class`)  bit the local ones
================  ==============================  ===========================================

Workers must see the input stacks and the output directory under the same paths (a shared
file system). A worker that dies is replaced and its tasks rerun by Dask (up to
``distributed.scheduler.allowed-failures`` times); an output stack appears only when its
task completes, and the hidden temporary files of killed tasks are removed at the end. If a
task fails, the job waits for the others to settle, removes what the run wrote and raises
the task's error (:class:`~formats.InputError` keeps its one-line message).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from csplugin.core.threads import cores
from formats import InputError

if TYPE_CHECKING:
    from distributed import Client

T = TypeVar("T")
#: Seconds to wait for a scheduler given by address.
CONNECT_TIMEOUT = 30


class DaskRunner:
    """A :class:`~csplugin.jobs.runners.TaskRunner` on a ``dask.distributed`` client.

    Parameters
    ----------
    client
        Connected client; the runner does not close it.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def map(self, function: Callable[..., T], tasks: Iterable[tuple[Any, ...]],
            sizes: Iterable[int], progress: Callable[[int], None] | None = None
            ) -> Iterator[T]:
        """Submit ``function(*task, None)`` for every task; yield the results in task order.

        ``progress(size)`` is called here as each task finishes. When a task fails, the others
        are waited for (so none is still writing) and the first error in task order is
        raised; when the caller stops early, the tasks not yet finished are cancelled.
        """
        from distributed import as_completed

        tasks, sizes = list(tasks), list(sizes)
        tag = f"{getattr(function, '__name__', 'task')}-{uuid.uuid4().hex[:8]}"
        futures = [self.client.submit(function, *task, None, key=f"{tag}-{i}", pure=False)
                   for i, task in enumerate(tasks)]
        position = {future.key: i for i, future in enumerate(futures)}
        finished: dict[int, Any] = {}
        failed: list[int] = []
        try:
            following = 0
            for future in as_completed(futures):
                i = position[future.key]
                if future.status != "finished":
                    failed.append(i)
                    continue
                finished[i] = future
                if progress is not None:
                    progress(sizes[i])
                while not failed and following in finished:  # in order, until a failure
                    yield finished.pop(following).result()
                    following += 1
            if failed:
                futures[min(failed)].result()  # raises the task's own exception
        finally:
            self.client.cancel([f for f in futures if not f.done()])


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None
            ) -> Iterator[DaskRunner | None]:
    """A :class:`DaskRunner` for ``--scheduler ADDRESS`` or ``--workers N``, else None.

    ``workers``: a local cluster of ``N`` worker processes, one task at a time each, the
    machine's cores shared among their numba threads; closed on exit. ``scheduler``: an
    existing cluster (e.g. started by dask-jobqueue), left running.

    Raises
    ------
    InputError
        Both or a bad value given, Dask not installed, or the scheduler unreachable.
    """
    if scheduler is None and workers is None:
        yield None
        return
    if scheduler is not None and workers is not None:
        raise InputError(None, "--scheduler and --workers exclude each other",
                         "give --scheduler for an existing cluster or --workers for a local one")
    if workers is not None:
        # every process of the local cluster, a worker restarted by its nanny during an
        # interrupt included, logs only CRITICAL from its first import of distributed (its
        # INFO tracebacks of closed connections would follow the CLI's one line)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(None, "--scheduler/--workers need Dask",
                         'install it with pip install "csplugin[dask]"') from None
    if workers is not None:
        if workers < 1:
            raise InputError(None, f"--workers {workers} must be at least 1", "e.g. --workers 4")
        threads = str(max(1, cores() // workers))
        env = {name: threads for name in ("CSPLUGIN_THREADS", "NUMBA_NUM_THREADS",
                                          "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                          "MKL_NUM_THREADS")}
        with _sigint_ignored():  # inherited: Ctrl-C stops this process, which closes them
            # CRITICAL: a task's error reaches the caller as an exception (one line in the
            # CLI); workers losing the scheduler during an interrupted run's teardown log
            # tracebacks at ERROR, which would follow the CLI's one line
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.CRITICAL,
                                   env=env)
        with cluster, Client(cluster) as client:
            yield DaskRunner(client)
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise InputError(None, f"cannot reach the Dask scheduler at {scheduler} ({exc})",
                         "check the address (tcp://host:8786) and that the cluster runs") from None
    with client:
        yield DaskRunner(client)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while worker processes start, so that they inherit it: a Ctrl-C (sent
    to the whole process group) then interrupts only this process, whose clean-up closes
    the cluster, and no worker prints a traceback."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)

