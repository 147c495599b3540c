"""Tests for csplugin.engines.fft and the spectra built on it, against plain numpy references."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from csplugin.engines import fft
from csplugin.engines.power_spectrum import (
    PowerSpectrumAccumulator,
    add_spectra,
    detector_line_weights,
    soft_circular_mask,
)
from csplugin.engines.transform import align_images


@pytest.mark.parametrize(("box", "pad", "count"), [(32, 1, 5), (32, 2, 7), (33, 2, 3), (24, 1, 40)])
def test_padded_rfft2_matches_numpy(box: int, pad: int, count: int) -> None:
    rng = np.random.default_rng(box + pad)
    x = rng.standard_normal((count, box, box)).astype(np.float32)
    m = pad * box
    ref = np.fft.rfft2(x.astype(np.float64), s=(m, m))
    plan = fft.padded_rfft2(box, m, batch=4)
    got = []
    for start in range(0, count, plan.batch):
        k = min(plan.batch, count - start)
        plan.input[:k] = x[start:start + k]
        got.append(plan.execute(k)[:k].copy())
    got = np.concatenate(got)
    assert got.dtype == np.complex64 and got.shape == ref.shape
    assert np.abs(got - ref).max() <= 2e-6 * np.abs(ref).max()
    assert fft.padded_rfft2(box, m, batch=4) is plan  # cached


def test_numpy_like_transforms() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 20, 20)).astype(np.float32)
    f = fft.rfft2(x)
    assert f.dtype == np.complex64
    np.testing.assert_allclose(f, np.fft.rfft2(x.astype(np.float64)), atol=1e-4)
    np.testing.assert_allclose(fft.irfft2(f, s=(20, 20)), x, atol=1e-5)
    np.testing.assert_allclose(fft.fft2(x), np.fft.fft2(x.astype(np.float64)), atol=1e-4)
    np.testing.assert_allclose(fft.ifft2(fft.fft2(x)).real, x, atol=1e-5)
    np.testing.assert_allclose(fft.irfft(fft.rfft(x, axis=-1), n=20, axis=-1), x, atol=1e-5)
    np.testing.assert_allclose(fft.fft(x, axis=0), np.fft.fft(x.astype(np.float64), axis=0),
                               atol=1e-4)


def test_accumulate_power_matches_reference() -> None:
    rng = np.random.default_rng(2)
    spectra = (rng.standard_normal((6, 8, 5)) + 1j * rng.standard_normal((6, 8, 5))).astype(
        np.complex64)
    slots, bins = np.array([0, 2, 3, 5]), np.array([1, 0, 1, 1])
    for power in (True, False):
        sums = np.zeros((2, 8, 5), np.float32)
        fft.accumulate_power(spectra, slots, bins, sums, power)
        a = np.abs(spectra.astype(np.complex128))
        q = a * a if power else a
        ref = np.stack([q[slots[bins == b]].sum(axis=0) for b in (0, 1)])
        np.testing.assert_allclose(sums, ref, rtol=1e-5)


def test_threads_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSPLUGIN_THREADS", "3")
    assert fft.threads() == 3
    monkeypatch.delenv("CSPLUGIN_THREADS")
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert fft.threads() == 1
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    assert fft.threads() == len(os.sched_getaffinity(0))


_CHILD = """
import warnings, numpy as np
warnings.simplefilter("always")
from csplugin.engines import fft
x = np.arange(2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    p = fft.padded_rfft2(16, 32, batch=2, expected=10**6)
    p.input[:] = x
    ok = np.allclose(p.execute(), np.fft.rfft2(x.astype(np.float64), s=(32, 32)), rtol=1e-5,
                     atol=1e-2)
    fft.padded_rfft2(16, 16, batch=2, expected=10**6)
    fft.rfft2(x); fft.rfft2(x)
print(fft.backend(), ok, sum(issubclass(w.category, RuntimeWarning) for w in caught))
"""


def _child(tmp_path: Path, **env: str) -> list[str]:
    run = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         env={**os.environ, "CSPLUGIN_CACHE_DIR": str(tmp_path), **env},
                         check=True)
    return run.stdout.split()


def test_wisdom_is_cached_on_disk(tmp_path: Path) -> None:
    assert _child(tmp_path) == ["pyfftw", "True", "0"]
    files = list(tmp_path.glob("fftw-wisdom-*.bin"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no leftovers
    before = files[0].stat().st_mtime_ns
    assert _child(tmp_path) == ["pyfftw", "True", "0"]
    assert files[0].stat().st_mtime_ns == before  # nothing new learnt: not rewritten
    wisdom_only = ("import numpy as np, pyfftw; from csplugin.engines import fft; fft._pyfftw(); "
                   "a = pyfftw.zeros_aligned((2, 16, 16), np.float32); "
                   "pyfftw.FFTW(a, pyfftw.zeros_aligned((2, 16, 9), np.complex64), axes=(1, 2), "
                   "flags=('FFTW_MEASURE', 'FFTW_DESTROY_INPUT', 'FFTW_WISDOM_ONLY'), "
                   "threads=fft.threads())")
    for cache, planned in ((tmp_path, True), (tmp_path / "empty", False)):
        run = subprocess.run([sys.executable, "-c", wisdom_only], capture_output=True,
                             env={**os.environ, "CSPLUGIN_CACHE_DIR": str(cache)})
        assert (run.returncode == 0) == planned  # the plan comes from the file, or not at all


def test_fallback_warns_once_and_gives_the_same_result(tmp_path: Path) -> None:
    assert _child(tmp_path, CSPLUGIN_NO_PYFFTW="1") == ["scipy", "True", "1"]


# --- spectra against a straightforward reference computation ------------------------------

def _reference(images, angles, *, pad, mask, normalize, suppress, psi_bin_deg, extra=0.0):
    """Per-particle float64 numpy pipeline: condition, padded FFT, |F|², psi bins, each bin
    rotated (bilinear) by the mean angle of its members, line suppression as documented."""
    n_img, box, _ = images.shape
    m = pad * box
    x = images.astype(np.float64)
    if mask or pad > 1 or normalize:
        x = x - x.mean(axis=(1, 2), keepdims=True)
    if normalize:
        sd = x.std(axis=(1, 2), keepdims=True)
        x = np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)
    if mask:
        x = x * soft_circular_mask(box)
    power = np.abs(np.fft.fftshift(np.fft.fft2(x, s=(m, m)), axes=(1, 2))) ** 2
    n_bins = round(180 / psi_bin_deg)
    width = math.pi / n_bins
    bins = np.rint(np.mod(angles, math.pi) / width).astype(int) % n_bins
    offsets = np.mod(angles - bins * width + math.pi / 2, math.pi) - math.pi / 2
    used = np.unique(bins)
    sums = np.stack([power[bins == b].sum(axis=0) for b in used]).astype(np.float32)
    counts = np.array([(bins == b).sum() for b in used])
    rot = used * width + np.array([offsets[bins == b].mean() for b in used]) + extra
    zero = np.zeros((len(used), 2))
    plain = align_images(sums, rot, zero, "linear").sum(axis=0, dtype=np.float64) / n_img
    if not suppress:
        return plain
    lines = detector_line_weights(m, pad + pad // 2)
    weighted = align_images(sums * lines, rot, zero, "linear").sum(axis=0, dtype=np.float64)
    weight = align_images(counts[:, None, None].astype(np.float32) * lines, rot, zero,
                          "linear").sum(axis=0, dtype=np.float64)
    ok = weight >= 0.05 * n_img
    return np.where(ok, weighted / np.where(ok, weight, 1), plain)


@pytest.mark.parametrize("settings", [
    {"pad": 1, "mask": False, "normalize": False, "suppress": False},
    {"pad": 2, "mask": True, "normalize": True, "suppress": True},
    {"pad": 2, "mask": False, "normalize": True, "suppress": True},
])
def test_spectrum_equals_reference(settings: dict) -> None:
    rng = np.random.default_rng(3)
    box, n = 24, 150
    images = (rng.standard_normal((n, box, box)) + 2.0).astype(np.float32)
    angles = rng.choice(np.deg2rad([0.0, 17.0, 17.2, 95.0, 200.0]), n) + rng.normal(0, 1e-3, n)
    acc = PowerSpectrumAccumulator(box, pad=settings["pad"], mask=settings["mask"],
                                   normalize=settings["normalize"],
                                   suppress_detector_lines=settings["suppress"], psi_bin_deg=0.5)
    acc.add(images[:70], angles[:70])
    acc.add(images[70:], angles[70:])
    got = acc.result(extra_rotation=0.3)
    ref = _reference(images, angles, psi_bin_deg=0.5, extra=0.3, **settings)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    camera = acc.camera_frame()
    x = images.astype(np.float64)
    assert camera.shape == ref.shape and np.isfinite(camera).all()
    if not (settings["mask"] or settings["normalize"] or settings["pad"] > 1):
        direct = (np.abs(np.fft.fftshift(np.fft.fft2(x), axes=(1, 2))) ** 2).mean(axis=0)
        assert np.abs(camera - direct).max() <= 1e-5 * direct.max()


def test_add_spectra_splits_like_separate_accumulators() -> None:
    rng = np.random.default_rng(4)
    images = rng.standard_normal((90, 16, 16)).astype(np.float32)
    angles = rng.uniform(0, 2 * np.pi, 90)
    owners = rng.integers(-1, 3, 90)
    together = [PowerSpectrumAccumulator(16) for _ in range(3)]
    add_spectra(together, images, angles, owners)
    for k, acc in enumerate(together):
        alone = PowerSpectrumAccumulator(16)
        alone.add(images[owners == k], angles[owners == k])
        assert acc.n == alone.n
        np.testing.assert_array_equal(acc.result(), alone.result())


def test_threads_get_their_own_plans() -> None:
    import threading

    mine = fft.padded_rfft2(16, 16, batch=2)
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(fft.padded_rfft2(16, 16, batch=2)))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and theirs[0].input is not mine.input
