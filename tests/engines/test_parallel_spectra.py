"""The multi-threaded spectrum accumulation: same sums as one thread, bit for bit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from csplugin.engines.parallel_spectra import accumulate_in_parallel, tasks_by_bin
from csplugin.engines.power_spectrum import PowerSpectrumAccumulator, add_spectra


def _data(n: int = 90, box: int = 24, seed: int = 3):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, box, box)).astype(np.float32)
    images[:, 5, :] += 3.0  # structure, so that a wrong rotation or bin shows
    angles = rng.choice(np.deg2rad([0.0, 10.0, 10.2, 47.0, 133.0, 200.0, 311.0]), n)
    angles = angles + rng.normal(0, 0.002, n)
    owners = rng.integers(-1, 3, n)  # -1: not added
    return images, angles, owners


def _read(images):
    def read(rows, out):
        out[...] = images[rows]
        return out
    return read


def _accs(box, **kw):
    return [PowerSpectrumAccumulator(box, pad=2, psi_bin_deg=1.0, **kw) for _ in range(3)]


@pytest.mark.parametrize("kw", [{}, {"mask": False, "normalize": False,
                                     "suppress_detector_lines": False, "quantity": "amplitude"}])
def test_same_sums_at_any_thread_count_and_as_add_spectra_in_bin_order(kw):
    images, angles, owners = _data()
    box = images.shape[1]
    results = []
    for n_threads, size in ((1, 1), (3, 1), (4, 7), (2, 1000)):
        accs = _accs(box, **kw)
        accumulate_in_parallel(accs, owners, angles, _read(images), n_threads=n_threads,
                               task_particles=size)
        results.append(accs)
    # the reference: one call, the particles sorted by (owner, bin) and position within
    ref = _accs(box, **kw)
    keep = np.flatnonzero(owners >= 0)
    key = owners[keep] * ref[0].n_bins + ref[0].psi_bins(angles[keep])
    order = keep[np.argsort(key, kind="stable")]
    add_spectra(ref, images[order], angles[order], owners[order])
    for accs in results:
        for a, r in zip(accs, ref):
            assert a.n == r.n > 0
            np.testing.assert_array_equal(a._sums, r._sums)
            np.testing.assert_array_equal(a._counts, r._counts)
            np.testing.assert_allclose(a._offsets, r._offsets, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(a.result(0.3), r.result(0.3))


def test_tasks_hold_whole_groups_once():
    rng = np.random.default_rng(0)
    owners = rng.integers(-1, 4, 500)
    bins = rng.integers(0, 20, 500)
    tasks = tasks_by_bin(owners, bins, 20, size=16)
    flat = np.concatenate(tasks)
    assert sorted(flat) == list(np.flatnonzero(owners >= 0))  # every owned position once
    groups = [set(zip(owners[t], bins[t])) for t in tasks]
    assert sum(len(g) for g in groups) == len(set().union(*groups))  # no group in two tasks
    assert all((np.diff(t) > 0).all() for t in tasks)  # ascending: file order
    assert all(len(t) >= 16 for t in tasks[:-1])
    assert tasks_by_bin(np.full(5, -1), np.zeros(5, np.int64), 20) == []


def test_also_rows_are_read_for_on_images_but_not_added():
    images, angles, owners = _data()
    also = owners < 0
    seen: list[int] = []
    lock = threading.Lock()

    def on_images(rows, imgs):
        np.testing.assert_array_equal(imgs, images[rows])  # raw images, before conditioning
        with lock:
            seen.extend(rows.tolist())

    accs = _accs(images.shape[1])
    accumulate_in_parallel(accs, owners, angles, _read(images), also=also,
                           on_images=on_images, n_threads=2, task_particles=5)
    assert sorted(seen) == list(range(len(images)))
    assert sum(a.n for a in accs) == int((owners >= 0).sum())


def test_prepare_replaces_the_conditioning():
    images, angles, owners = _data()
    plain = dict(mask=False, normalize=False)
    twice = _accs(images.shape[1], **plain)
    accumulate_in_parallel(twice, owners, angles, _read(images),
                           prepare=lambda rows, imgs: 2 * imgs, n_threads=2)
    once = _accs(images.shape[1], **plain)
    accumulate_in_parallel(once, owners, angles, _read(images), n_threads=2)
    for a, b in zip(twice, once):
        np.testing.assert_allclose(a._sums, 4 * b._sums, rtol=1e-5, atol=1e-3)


def test_a_worker_failure_is_raised_and_counts_nothing():
    images, angles, owners = _data()
    bad = int(np.flatnonzero(owners >= 0)[10])

    def read(rows, out):
        if bad in rows:
            raise OSError("disk gone")
        out[...] = images[rows]
        return out

    accs = _accs(images.shape[1])
    with pytest.raises(OSError, match="disk gone"):
        accumulate_in_parallel(accs, owners, angles, read, n_threads=3, task_particles=2)
    assert all(a.n == 0 for a in accs)


def test_the_shared_pool_serves_several_calls_and_survives_a_failure():
    images, angles, owners = _data()
    ref = _accs(images.shape[1])
    accumulate_in_parallel(ref, owners, angles, _read(images), n_threads=1)

    def broken(rows, out):
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):  # on the process's shared 2-thread pool
        accumulate_in_parallel(_accs(images.shape[1]), owners, angles, broken, n_threads=2)
    for _ in range(2):  # the same pool again, after the failure
        accs = _accs(images.shape[1])
        accumulate_in_parallel(accs, owners, angles, _read(images), n_threads=2)
        for a, r in zip(accs, ref):
            np.testing.assert_array_equal(a._sums, r._sums)


def test_bins_larger_than_a_piece_are_read_in_pieces_with_the_same_sums(monkeypatch):
    """A task (whole bins) is read PIECE_BYTES at a time: memory per thread is bounded
    whatever the particles per bin, and the sums are unchanged."""
    import csplugin.engines.parallel_spectra as ps

    images, angles, owners = _data(n=120)
    angles = np.round(angles, 1)  # few, crowded bins
    ref = _accs(images.shape[1])
    accumulate_in_parallel(ref, owners, angles, _read(images), n_threads=1)
    sizes: list[int] = []

    def read(rows, out):
        sizes.append(len(rows))
        out[...] = images[rows]
        return out

    monkeypatch.setattr(ps, "PIECE_BYTES", 3 * 4 * images.shape[1] ** 2)
    accs = _accs(images.shape[1])
    accumulate_in_parallel(accs, owners, angles, read, n_threads=3)
    assert max(sizes) == 3
    for a, r in zip(accs, ref):
        np.testing.assert_array_equal(a._sums, r._sums)
        np.testing.assert_array_equal(a._counts, r._counts)
