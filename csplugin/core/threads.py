"""How many threads the maths may use: one setting for numba kernels, FFTs and readers."""

from __future__ import annotations

import os


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
