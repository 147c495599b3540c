"""``rotate_bins`` is, bit for bit, what its docstring says: per bin, ``align_images``
(linear) of the centred full plane (and of its line-masked plane and the masked count),
rounded to float32 and added in float64, ``_GROUP`` bins at a time; here that reference is
built from the project's own ``align_images``, ``half_to_full`` and ``detector_line_weights``,
so any change of the vector kernel's arithmetic, order or edge handling fails."""

from __future__ import annotations

import numpy as np
import pytest

from csplugin.engines.spectrum_kernels import (
    _GROUP,
    detector_line_weights,
    half_to_full,
    rotate_bins,
)
from csplugin.engines.transform import align_images


def _reference(sums, used, angles, counts, halfwidth, tasks):
    """Partial sums ``(tasks, P, M, M)`` and camera sums as ``rotate_bins`` documents them."""
    m = sums.shape[1]
    mask = detector_line_weights(m, halfwidth) if halfwidth >= 0 else None
    planes = 1 if mask is None else 3
    partial = np.zeros((tasks, planes, m, m))
    cameras = np.zeros((tasks, m, m // 2 + 1))
    for t in range(tasks):  # task t takes bins t, t + tasks, ...
        mine, my_angles, my_counts = used[t::tasks], angles[t::tasks], counts[t::tasks]
        for g0 in range(0, len(mine), _GROUP):
            group = np.zeros((planes, m, m))
            for b, a, n in zip(mine[g0:g0 + _GROUP], my_angles[g0:g0 + _GROUP],
                               my_counts[g0:g0 + _GROUP]):
                cameras[t] += sums[b]
                full = half_to_full(sums[b])
                images = [full] if mask is None else [full, full * mask, np.float32(n) * mask]
                group += align_images(np.stack(images), np.full(len(images), a),
                                      np.zeros((len(images), 2)), "linear")
            partial[t] += group
    return partial, cameras


@pytest.mark.parametrize("m", [6, 9, 16, 17, 33, 64])
@pytest.mark.parametrize("halfwidth", [-1, 0, 1, 3])
@pytest.mark.parametrize("tasks", [1, 2])
def test_rotate_bins_bitwise_equal_to_align_images_per_bin(m, halfwidth, tasks):
    rng = np.random.default_rng(m * 10 + halfwidth)
    bins = 7
    sums = rng.random((bins + 2, m, m // 2 + 1), dtype=np.float32) * 100
    used = np.sort(rng.choice(bins + 2, bins, replace=False))
    angles = rng.uniform(-np.pi, np.pi, bins)
    angles[:3] = [0.0, np.pi / 2, np.pi]  # exact grid angles too (on the border)
    counts = rng.integers(1, 1000, bins).astype(np.float32)
    partial = np.zeros((tasks, 3 if halfwidth >= 0 else 1, m, m))
    cameras = np.zeros((tasks, m, m // 2 + 1))
    rotate_bins(sums, used, np.cos(angles), np.sin(angles), counts, halfwidth, partial, cameras)
    ref_partial, ref_cameras = _reference(sums, used, angles, counts, halfwidth, tasks)
    assert partial[:, 0].any()
    assert np.array_equal(partial, ref_partial)
    assert np.array_equal(cameras, ref_cameras)
