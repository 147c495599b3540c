"""``rotate_bins`` (vector gathers) equals the scalar kernel it replaced, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from csplugin.engines.spectrum_kernels import rotate_bins
from csplugin.engines.transform import _source_row

_GROUP = 4


@njit
def _reference(sums, used, cos_a, sin_a, counts, halfwidth, partial, camera):
    """The scalar kernel before the vector version (commit 945b7e6), tasks in sequence."""
    m, half = sums.shape[1], sums.shape[2]
    centre, lines, stride = m // 2, halfwidth >= 0, m + 1
    mask = np.zeros(stride * stride, dtype=np.float32)
    for r in range(m):
        for c in range(m):
            if abs(c - centre) > halfwidth and abs(r - centre) > halfwidth:
                mask[r * stride + c] = 1.0
    clear = np.zeros(stride * stride, dtype=np.bool_)
    for p in range(stride * (stride - 1) - 1):
        clear[p] = (mask[p] + mask[p + 1] + mask[p + stride] + mask[p + stride + 1]) == 4.0
    tasks = partial.shape[0]
    right, down = np.uint64(1), np.uint64(stride)
    for t in range(tasks):
        mine, my_cos, my_sin = used[t::tasks], cos_a[t::tasks], sin_a[t::tasks]
        my_counts, out, cam = counts[t::tasks], partial[t], camera[t]
        group = np.zeros((_GROUP, stride * stride), dtype=np.float32)
        rows = np.zeros((3, m), dtype=np.float64)
        inside = np.empty(m, dtype=np.bool_)
        base = np.empty(m, dtype=np.uint64)
        fu, fv = np.empty(m), np.empty(m)
        for g0 in range(0, mine.shape[0], _GROUP):
            size = min(_GROUP, mine.shape[0] - g0)
            for g in range(size):
                b = mine[g0 + g]
                for r in range(m):
                    for c in range(half):
                        cam[r, c] += sums[b, r, c]
                full = group[g]
                for r in range(m):
                    r0 = r - centre
                    if r0 < 0:
                        r0 += m
                    r1 = m - r0
                    if r1 == m:
                        r1 = 0
                    for c in range(m):
                        c0 = c - centre
                        if c0 < 0:
                            c0 += m
                        full[r * stride + c] = (sums[b, r0, c0] if c0 < half
                                                else sums[b, r1, m - c0])
            for i in range(m):
                rows[:] = 0.0
                for g in range(size):
                    full, n = group[g], my_counts[g0 + g]
                    _source_row(i, my_cos[g0 + g], my_sin[g0 + g], 0.0, 0.0, m, 1, stride, 0,
                                inside, base, fu, fv)
                    n32 = np.float32(n)
                    for j in range(m):
                        if not inside[j]:
                            continue
                        wx, wy, p = fu[j], fv[j], base[j]
                        w00 = (1.0 - wy) * (1.0 - wx)
                        w01 = (1.0 - wy) * wx
                        w10 = wy * (1.0 - wx)
                        w11 = wy * wx
                        f00, f01 = full[p], full[p + right]
                        f10, f11 = full[p + down], full[p + down + right]
                        val = w00 * f00
                        val += w01 * f01
                        val += w10 * f10
                        val += w11 * f11
                        v32 = np.float32(val)
                        rows[0, j] += v32
                        if not lines:
                            continue
                        if clear[p]:
                            rows[1, j] += v32
                            rows[2, j] += n32
                            continue
                        l00, l01 = mask[p], mask[p + right]
                        l10, l11 = mask[p + down], mask[p + down + right]
                        val = w00 * (f00 * l00)
                        val += w01 * (f01 * l01)
                        val += w10 * (f10 * l10)
                        val += w11 * (f11 * l11)
                        rows[1, j] += np.float32(val)
                        val = w00 * (n * l00)
                        val += w01 * (n * l01)
                        val += w10 * (n * l10)
                        val += w11 * (n * l11)
                        rows[2, j] += np.float32(val)
                for j in range(m):
                    out[0, i, j] += rows[0, j]
                if lines:
                    for j in range(m):
                        out[1, i, j] += rows[1, j]
                        out[2, i, j] += rows[2, j]


def _both(m, bins, halfwidth, tasks, seed):
    rng = np.random.default_rng(seed)
    sums = rng.random((bins + 2, m, m // 2 + 1), dtype=np.float32) * 100
    used = np.sort(rng.choice(bins + 2, bins, replace=False))
    angles = rng.uniform(-np.pi, np.pi, bins)
    angles[:3] = [0.0, np.pi / 2, np.pi][:bins]  # exact grid angles too (on the border)
    counts = rng.integers(1, 1000, bins).astype(np.float32)
    planes = 3 if halfwidth >= 0 else 1
    results = []
    for kernel in (rotate_bins, _reference):
        partial = np.zeros((tasks, planes, m, m))
        cameras = np.zeros((tasks, m, m // 2 + 1))
        kernel(sums, used, np.cos(angles), np.sin(angles), counts, halfwidth, partial, cameras)
        results.append((partial, cameras))
    return results


@pytest.mark.parametrize("m", [6, 9, 16, 17, 33, 64])
@pytest.mark.parametrize("halfwidth", [-1, 0, 1, 3])
@pytest.mark.parametrize("tasks", [1, 2])
def test_rotate_bins_bitwise_equal_to_scalar_kernel(m, halfwidth, tasks):
    (new, new_cam), (old, old_cam) = _both(m, 7, halfwidth, tasks, seed=m * 10 + halfwidth)
    assert np.array_equal(new, old)
    assert np.array_equal(new_cam, old_cam)
    assert new[:, 0].any()
