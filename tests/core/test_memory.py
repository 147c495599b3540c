"""Per-thread scratch buffers."""

from __future__ import annotations

import threading

import numpy as np

from csplugin.core.memory import scratch


def test_scratch_is_reused_per_thread_and_name_and_grows() -> None:
    a = scratch("t", (4, 8))
    a[...] = 1
    b = scratch("t", (2, 8))
    assert b.base is a.base or np.shares_memory(a, b)  # the same buffer again
    assert a.flags.c_contiguous and a.dtype == np.float32 and b.shape == (2, 8)
    assert not np.shares_memory(scratch("other", (4, 8)), a)
    big = scratch("t", (100, 8), np.float64)
    assert big.shape == (100, 8) and big.dtype == np.float64
    seen = []
    worker = threading.Thread(target=lambda: seen.append(scratch("t", (4, 8))))
    worker.start()
    worker.join()
    assert not np.shares_memory(seen[0], scratch("t", (4, 8)))  # each thread its own
