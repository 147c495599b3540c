"""Worker threads: ordered results, bounded work in flight, errors at their item."""

from __future__ import annotations

import threading
import time

import numba
import numpy as np
import pytest

from csplugin.core.threads import ordered_map


def test_results_come_in_input_order_from_several_threads() -> None:
    names: set[str] = set()

    def slow_square(x: int) -> int:
        time.sleep(0.002 * (7 - x % 7))  # later items often finish first
        names.add(threading.current_thread().name)
        return x * x

    assert list(ordered_map(slow_square, range(40), workers=4)) == [x * x for x in range(40)]
    assert len(names) > 1


def test_workers_run_numba_kernels_on_one_thread_each() -> None:
    seen = list(ordered_map(lambda _: numba.get_num_threads(), range(8), workers=3))
    assert seen == [1] * 8


def test_at_most_ahead_times_workers_items_in_flight() -> None:
    started: list[int] = []
    gen = ordered_map(lambda x: started.append(x) or x, iter(range(1000)), workers=2, ahead=3)
    assert next(gen) == 0
    time.sleep(0.05)
    assert len(started) <= 2 * 3 + 1  # the consumer has taken one
    gen.close()


def test_an_error_is_raised_at_its_item_and_the_rest_is_dropped() -> None:
    done: list[int] = []

    def fail_at_5(x: int) -> int:
        if x == 5:
            raise OSError("disk gone")
        done.append(x)
        return x

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for value in ordered_map(fail_at_5, range(1000), workers=2):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]
    assert len(done) < 100


def test_one_worker_runs_in_the_calling_thread() -> None:
    me = threading.get_ident()
    assert list(ordered_map(lambda _: threading.get_ident(), range(3), workers=1)) == [me] * 3
    assert np.array_equal(list(ordered_map(abs, [-1, 2], workers=1)), [1, 2])


def test_the_worker_pool_is_shared_and_outlives_with_blocks() -> None:
    from csplugin.core.threads import in_worker, worker_pool

    pool = worker_pool(3)
    with pool:
        pass
    assert worker_pool(3) is pool and pool.submit(in_worker).result() is True
    assert not in_worker()
    # from a worker thread, ordered_map runs in that thread: no task waits for its own queue
    nested = pool.submit(lambda: list(ordered_map(lambda x: x + 1, range(5), workers=3)))
    assert nested.result(timeout=10) == [1, 2, 3, 4, 5]
