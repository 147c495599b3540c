"""FFTs for the hot paths: pyfftw plans built once and reused, with a scipy fallback.

* **Plans.** float32/complex64 FFTW plans (``pyfftw``) are built once per shape, batch,
  axes and thread count and cached for the life of the process
  (:class:`PaddedRFFT2` for the zero-padded image transforms of the power spectra; the
  numpy-like :func:`rfft2`, :func:`irfft2`, :func:`fft2`, :func:`ifft2`, :func:`rfft`,
  :func:`irfft`, :func:`fft` through ``pyfftw.interfaces`` with its plan cache).
* **Threads** = :func:`threads`: ``CSPLUGIN_THREADS``, else ``NUMBA_NUM_THREADS``, else the
  cores this process may run on (``os.sched_getaffinity``), so one setting bounds both the
  numba kernels and the FFTs.
* **Effort.** ``FFTW_MEASURE`` where a run does enough transforms to repay the planning
  (:data:`MEASURE_FROM` images or more), else ``FFTW_ESTIMATE``. What FFTW learns
  (*wisdom*) is kept on disk in :func:`cache_dir` (one file per CPU model and pyfftw
  version, replaced atomically) and loaded by the next run, so a measured plan is paid
  for once per machine.
* **Fallback.** If pyfftw cannot be imported or cannot plan, the same functions run
  ``scipy.fft`` (same layouts, same precision) after one :class:`RuntimeWarning`.

Layouts are numpy's: unnormalised forward transforms, ``rfft2`` half planes
``(..., M, M//2 + 1)`` with DC at ``[0, 0]``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: FFTW's and numba's thread pools (two
# OpenMP runtimes) take turns on the same cores, and spinning pools starve each other and
# the reader thread (measured on 2 loaded cores: a 2-thread FFT batch 1.3 ms passive vs
# 20-37 ms spinning). Set before either runtime loads; an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from csplugin.core.threads import threads  # noqa: E402

__all__ = [
    "MEASURE_FROM",
    "PaddedRFFT2",
    "accumulate_power",
    "backend",
    "cache_dir",
    "fft",
    "fft2",
    "ifft2",
    "irfft",
    "irfft2",
    "padded_rfft2",
    "rfft",
    "rfft2",
    "threads",
]

#: Runs that transform at least this many images plan with FFTW_MEASURE (a measured 256²
#: plan costs ~0.2-1 s once per machine, then comes from the wisdom file).
MEASURE_FROM = 2000
#: Bytes of complex64 output per batch of a :class:`PaddedRFFT2` at most (16 images of 256²
#: at pad 1, 4 at pad 2: large enough for FFTW's threads, small enough for the caches).
BATCH_BYTES = 8 << 20

_lock = threading.RLock()
_state: dict[str, Any] = {"pyfftw": None, "failed": False, "wisdom_loaded": False}
_plans: OrderedDict[tuple, PaddedRFFT2] = OrderedDict()
_MAX_PLANS = 16


def cache_dir() -> Path:
    """Where FFTW wisdom is kept: ``CSPLUGIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/csplugin``,
    else ``~/.cache/csplugin``."""
    given = os.environ.get("CSPLUGIN_CACHE_DIR")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "csplugin"


def _fallback(reason: str) -> None:
    if not _state["failed"]:
        _state["failed"] = True
        warnings.warn(f"pyfftw unavailable ({reason}); using scipy.fft for FFTs (slower)",
                      RuntimeWarning, stacklevel=3)


def _pyfftw():
    """The pyfftw module, or None (after one warning) when it cannot be used."""
    if _state["failed"] or os.environ.get("CSPLUGIN_NO_PYFFTW"):
        if not _state["failed"]:
            _fallback("CSPLUGIN_NO_PYFFTW is set")
        return None
    if _state["pyfftw"] is None:
        # pyfftw's package import also loads its dask and scipy.fftpack interfaces (0.5 s of
        # a job's start-up); hide those two while it loads (they are not used here, and
        # a later ``import dask`` is unaffected), take scipy_fft when first needed (_call)
        hidden = [name for name in ("dask", "scipy.fftpack") if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]
        try:
            import pyfftw
            import pyfftw.interfaces.cache
        except Exception as exc:  # ImportError, or a broken FFTW build
            _fallback(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
        pyfftw.interfaces.cache.enable()
        pyfftw.interfaces.cache.set_keepalive_time(30.0)
        _state["pyfftw"] = pyfftw
        _load_wisdom(pyfftw)
    return _state["pyfftw"]


def backend() -> str:
    """``"pyfftw"`` or ``"scipy"``: what the FFTs of this process run on."""
    return "pyfftw" if _pyfftw() is not None else "scipy"


def _wisdom_path(pyfftw) -> Path:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    key = hashlib.sha1(f"{model}|{platform.machine()}|{pyfftw.__version__}".encode()).hexdigest()
    return cache_dir() / f"fftw-wisdom-{key[:12]}.bin"


def _load_wisdom(pyfftw) -> None:
    _state["wisdom_loaded"] = True
    try:
        blobs = _wisdom_path(pyfftw).read_bytes().split(b"\0\0SEP\0\0")
        if len(blobs) == 3:
            pyfftw.import_wisdom(tuple(blobs))
    except (OSError, ValueError, TypeError):
        pass  # no wisdom yet, or an unreadable file: plan afresh


def _save_wisdom(pyfftw) -> None:
    """Write the process's wisdom (which includes what was loaded) atomically; never fails."""
    path = _wisdom_path(pyfftw)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(b"\0\0SEP\0\0".join(pyfftw.export_wisdom()))
        os.replace(tmp, path)
    except OSError:
        pass


def _effort(expected: int) -> str:
    return "FFTW_MEASURE" if expected >= MEASURE_FROM else "FFTW_ESTIMATE"


class PaddedRFFT2:
    """Half-plane FFTs of ``(N, N)`` float32 images zero-padded to ``(M, M)``, ``batch`` at once.

    Write (or condition) up to ``batch`` images into :attr:`input` ``(batch, N, N)`` (a view,
    not necessarily contiguous), call
    :meth:`execute` with their number, then read :attr:`output` ``(batch, M, M//2 + 1)``
    complex64 (overwritten by the next call). Padding goes after the last row and column;
    at ``M > N`` the rows are transformed first and only the ``N`` non-zero ones, then the
    columns. Get instances from :func:`padded_rfft2` (cached).
    """

    def __init__(self, n: int, m: int, batch: int, n_threads: int, effort: str) -> None:
        self.n, self.m, self.batch, self.threads = n, m, batch, n_threads
        h = m // 2 + 1
        pyfftw = _pyfftw()
        self._plans: list = []
        if pyfftw is not None:
            try:
                self._build(pyfftw, n, m, h, batch, n_threads, effort)
                return
            except Exception as exc:  # FFTW could not plan this layout: scipy from now on
                _fallback(f"planning failed: {exc}")
        self.input = np.zeros((batch, n, n), np.float32)
        self.output = np.zeros((batch, m, h), np.complex64)

    def _build(self, pyfftw, n: int, m: int, h: int, batch: int, n_threads: int,
               effort: str) -> None:
        known = pyfftw.export_wisdom() if effort == "FFTW_MEASURE" else None
        self.output = pyfftw.zeros_aligned((batch, m, h), np.complex64)
        if m == n:
            self.input = pyfftw.zeros_aligned((batch, n, n), np.float32)
            self._plans = [pyfftw.FFTW(self.input, self.output, axes=(1, 2),
                                       flags=(effort, "FFTW_DESTROY_INPUT"), threads=n_threads)]
        else:
            # rows (only the N non-zero ones, whose padded columns stay 0) into the top of a
            # zero-filled plane, then the columns; inputs preserved so the padding stays 0
            wide = pyfftw.zeros_aligned((batch, n, m), np.float32)
            rows = pyfftw.zeros_aligned((batch, m, h), np.complex64)
            self._plans = [
                pyfftw.FFTW(wide, rows[:, :n, :], axes=(2,), flags=(effort,),
                            threads=n_threads),
                pyfftw.FFTW(rows, self.output, axes=(1,), flags=(effort,),
                            threads=n_threads),
            ]
            wide[...] = 0  # planning may scribble on the arrays
            rows[...] = 0
            self.input = wide[:, :, :n]
        if known is not None and pyfftw.export_wisdom() != known:  # learnt something new
            _save_wisdom(pyfftw)
        self.input[...] = 0

    def execute(self, count: int | None = None) -> NDArray[np.complex64]:
        """Transform the first ``count`` (default all) images of :attr:`input`; return
        :attr:`output` (only its first ``count`` planes are meaningful)."""
        count = self.batch if count is None else count
        if not self._plans:  # scipy fallback
            import scipy.fft

            f = scipy.fft.rfft(self.input[:count], n=self.m, axis=-1, workers=self.threads)
            self.output[:count] = scipy.fft.fft(f, n=self.m, axis=-2, workers=self.threads)
            return self.output
        for plan in self._plans:
            plan.execute()
        return self.output


def padded_rfft2(n: int, m: int, batch: int | None = None, expected: int = 0,
                 n_threads: int | None = None) -> PaddedRFFT2:
    """The cached :class:`PaddedRFFT2` for ``N``, ``M`` and ``batch`` (default: about
    :data:`BATCH_BYTES` of output, at least 1) of the calling thread (each thread gets its
    own buffers); ``expected`` images to transform in this run choose the planning effort
    (see :data:`MEASURE_FROM`); ``n_threads`` FFTW threads (default :func:`threads`; 1 for
    a plan run by each of several worker threads)."""
    if batch is None:  # a power of two (divides the 16 MiB reading chunks), at least 1
        fit = max(1, min(64, BATCH_BYTES // (8 * m * (m // 2 + 1))))
        batch = 1 << (fit.bit_length() - 1)
    n_threads = threads() if n_threads is None else n_threads
    effort = _effort(expected)
    key = (n, m, batch, n_threads, threading.get_ident())  # buffers are not shared by threads
    with _lock:
        plan = _plans.get(key)
        if plan is None:
            plan = PaddedRFFT2(n, m, batch, n_threads, effort)
            _plans[key] = plan
            while len(_plans) > max(_MAX_PLANS, 4 * threads()):  # several per worker thread
                _plans.popitem(last=False)
        else:
            _plans.move_to_end(key)
        return plan


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _accumulate_power(spectra, count, slots, bins, power, sums):  # pragma: no cover - numba
    """``sums[bins[j], r, c] += |spectra[slots[j], r, c]|^2`` (or ``|.|``) for ``j < count``.

    ``spectra`` is the complex64 output viewed as float32 pairs ``(b, M, 2 h)``; each thread
    owns whole rows of the planes, so there are no races.
    """
    h = sums.shape[2]
    for r in prange(spectra.shape[1]):
        for j in range(count):
            src = spectra[slots[j], r]
            dst = sums[bins[j], r]
            if power:
                for c in range(h):
                    re = src[2 * c]
                    im = src[2 * c + 1]
                    dst[c] += re * re + im * im
            else:
                for c in range(h):
                    re = src[2 * c]
                    im = src[2 * c + 1]
                    dst[c] += np.sqrt(re * re + im * im)


def accumulate_power(spectra: NDArray[np.complex64], slots: NDArray[np.int64],
                     bins: NDArray[np.int64], sums: NDArray[np.float32],
                     power: bool = True) -> None:
    """Add ``|spectra[slots[j]]|²`` (``power``) or ``|spectra[slots[j]]|`` into
    ``sums[bins[j]]`` for every ``j``, without complex or full-size temporaries.

    ``spectra`` ``(b, M, h)`` complex64 (C-contiguous half planes), ``sums`` ``(k, M, h)``
    float32; float32 arithmetic, one image after the other per pixel (the order of a plain
    loop over images).
    """
    if spectra.dtype != np.complex64 or not spectra.flags.c_contiguous:
        raise ValueError("spectra must be C-contiguous complex64")
    if sums.shape[1:] != spectra.shape[1:] or sums.dtype != np.float32:
        raise ValueError(f"sums must be float32 (k, {spectra.shape[1]}, {spectra.shape[2]})")
    slots = np.ascontiguousarray(slots, np.int64)
    bins = np.ascontiguousarray(bins, np.int64)
    if len(slots) != len(bins):
        raise ValueError("slots and bins differ in length")
    if len(slots) == 0:
        return
    pairs = spectra.view(np.float32)
    _accumulate_power(pairs, len(slots), slots, bins, bool(power), sums)


# ---- numpy-like transforms (fresh output arrays; pyfftw's plan cache, else scipy) ----------

def _call(name: str, x: np.ndarray, expected: int, **kwargs) -> np.ndarray:
    pyfftw = _pyfftw()
    if pyfftw is not None:
        try:
            import pyfftw.interfaces.scipy_fft

            fn = getattr(pyfftw.interfaces.scipy_fft, name)
            return fn(x, workers=threads(), planner_effort=_effort(expected), **kwargs)
        except Exception as exc:  # planning failed for this layout
            _fallback(f"planning failed: {exc}")
    import scipy.fft

    return getattr(scipy.fft, name)(x, workers=threads(), **kwargs)


def _single(x: np.ndarray, complex_input: bool = False) -> np.ndarray:
    """C-contiguous ``x`` in the precision numpy's FFTs would use: float32/float16 ->
    float32, complex64 stays, anything else double."""
    x = np.asarray(x)
    if complex_input or np.iscomplexobj(x):
        single = x.dtype in (np.float32, np.float16, np.complex64)
        return np.ascontiguousarray(x, np.complex64 if single else np.complex128)
    return np.ascontiguousarray(x, np.float32 if x.dtype in (np.float32, np.float16)
                                else np.float64)


def rfft2(x: np.ndarray, s: tuple[int, int] | None = None, axes=(-2, -1),
          expected: int = 0) -> np.ndarray:
    """``numpy.fft.rfft2`` (float32 in -> complex64 out); ``expected`` transforms in this run
    choose the planning effort."""
    return _call("rfft2", _single(x), expected, s=s, axes=axes)


def irfft2(x: np.ndarray, s: tuple[int, int] | None = None, axes=(-2, -1),
           expected: int = 0) -> np.ndarray:
    """``numpy.fft.irfft2`` (complex64 in -> float32 out)."""
    return _call("irfft2", _single(x, True), expected, s=s, axes=axes)


def fft2(x: np.ndarray, s: tuple[int, int] | None = None, axes=(-2, -1),
         expected: int = 0) -> np.ndarray:
    """``numpy.fft.fft2`` (float32/complex64 in -> complex64 out)."""
    return _call("fft2", _single(x, True), expected, s=s, axes=axes)


def ifft2(x: np.ndarray, s: tuple[int, int] | None = None, axes=(-2, -1),
          expected: int = 0) -> np.ndarray:
    """``numpy.fft.ifft2``."""
    return _call("ifft2", _single(x, True), expected, s=s, axes=axes)


def rfft(x: np.ndarray, n: int | None = None, axis: int = -1, expected: int = 0) -> np.ndarray:
    """``numpy.fft.rfft``."""
    return _call("rfft", _single(x), expected, n=n, axis=axis)


def irfft(x: np.ndarray, n: int | None = None, axis: int = -1, expected: int = 0) -> np.ndarray:
    """``numpy.fft.irfft``."""
    return _call("irfft", _single(x, True), expected, n=n, axis=axis)


def fft(x: np.ndarray, n: int | None = None, axis: int = -1, expected: int = 0) -> np.ndarray:
    """``numpy.fft.fft``."""
    return _call("fft", _single(x, True), expected, n=n, axis=axis)
