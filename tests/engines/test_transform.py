"""Tests of csplugin.engines.transform.align_images.

Convention under test: a point p of the input ends up at R(theta) (p + s), with
x = col - N//2, y = row - N//2 and R(a) = [[cos a, -sin a], [sin a, cos a]].
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numba
import numpy as np
import pytest
from scipy import ndimage

from csplugin.engines.transform import INTERPOLATIONS, align_images, source_coordinates

N = 64
C = N // 2

# Mean relative squared error inside the inscribed disc against analytic truth,
# for Gaussians with sigma >= 1.5 px (measured: cubic 1.9e-8..1.4e-7, linear 1.3e-4..4.8e-4).
CUBIC_TOL = 1e-6
LINEAR_TOL = 2e-3
MAX_RATIO = 1 / 20  # cubic / linear error (measured: 7.5e-5..5.1e-4)


def rot(a: float) -> np.ndarray:
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


Blob = tuple[float, np.ndarray, np.ndarray]  # amplitude, centre (x, y), covariance


def render(blobs: list[Blob], n: int = N) -> np.ndarray:
    """Sum of anisotropic Gaussians sampled at the pixel centres, shape (n, n)."""
    y, x = np.mgrid[0:n, 0:n] - n // 2
    pts = np.stack([x, y], axis=-1).astype(np.float64)
    img = np.zeros((n, n))
    for amp, mu, cov in blobs:
        d = pts - mu
        img += amp * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d))
    return img


def moved(blobs: list[Blob], theta: float, shift: np.ndarray) -> list[Blob]:
    """The blobs after shifting by ``shift`` and rotating by ``theta``: p -> R(theta)(p + s)."""
    r = rot(theta)
    return [(amp, r @ (mu + shift), r @ cov @ r.T) for amp, mu, cov in blobs]


def random_blobs(rng: np.random.Generator, k: int = 6) -> list[Blob]:
    blobs = []
    for _ in range(k):
        mu = rng.uniform(0, N / 4) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        r = rot(rng.uniform(0, np.pi))
        cov = r @ np.diag(rng.uniform(1.5, 4.0, 2) ** 2) @ r.T
        blobs.append((rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5), mu, cov))
    return blobs


def blob(x: float, y: float, sigma: float = 1.5) -> list[Blob]:
    return [(1.0, np.array([x, y], dtype=float), sigma**2 * np.eye(2))]


def disc(radius: float, n: int = N) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n] - n // 2
    return np.hypot(x, y) <= radius


def peak(img: np.ndarray) -> tuple[int, int]:
    """(row, col) of the maximum."""
    row, col = np.unravel_index(np.argmax(img), img.shape)
    return int(row), int(col)


def align1(img: np.ndarray, theta: float, shift: tuple[float, float], method: str) -> np.ndarray:
    return align_images(img[None], [theta], [shift], method)[0]


CASES = [
    (0.3, (1.3, -2.2)),
    (-2.0, (0.5, 0.25)),
    (np.radians(137.5), (-3.7, 2.9)),
    (np.radians(90.0), (2.0, 0.5)),
    (1.0, (0.0, 0.0)),
    (0.0, (0.37, -1.61)),
]


def test_analytic_truth_cubic_beats_linear() -> None:
    rng = np.random.default_rng(1)
    blobs = [random_blobs(rng) for _ in CASES]
    images = np.stack([render(b) for b in blobs]).astype(np.float32)
    angles = np.array([t for t, _ in CASES])
    shifts = np.array([s for _, s in CASES])
    out = {m: align_images(images, angles, shifts, m) for m in INTERPOLATIONS}
    for k, (theta, shift) in enumerate(CASES):
        truth = render(moved(blobs[k], theta, np.array(shift)))
        inside = disc(C - 1 - np.abs(shift).max())
        err = {
            m: np.sum((out[m][k] - truth)[inside] ** 2) / np.sum(truth[inside] ** 2)
            for m in INTERPOLATIONS
        }
        assert err["cubic"] <= CUBIC_TOL, (k, err)
        assert err["linear"] <= LINEAR_TOL, (k, err)
        assert err["cubic"] <= MAX_RATIO * err["linear"], (k, err)


@pytest.mark.parametrize("method", INTERPOLATIONS)
def test_rotation_sign(method: str) -> None:
    # +90 deg takes (x=+10, y=0) to (0, +10): the blob moves to larger rows.
    out = align1(render(blob(10, 0)), np.pi / 2, (0, 0), method)
    assert peak(out) == (C + 10, C)
    out = align1(render(blob(10, 0)), np.radians(30), (0, 0), method)
    assert peak(out) == (C + 5, C + 9)  # (10 cos 30, 10 sin 30) = (8.66, 5)


@pytest.mark.parametrize("method", INTERPOLATIONS)
def test_shift_sign(method: str) -> None:
    assert peak(align1(render(blob(0, 0)), 0.0, (3, 0), method)) == (C, C + 3)
    assert peak(align1(render(blob(0, 0)), 0.0, (0, -4), method)) == (C - 4, C)


@pytest.mark.parametrize("method", INTERPOLATIONS)
def test_shift_then_rotate(method: str) -> None:
    # R(theta)(p + s) = (0, 14); R(theta) p + s would be (4, 10), R(theta)(p - s) = (0, 6).
    out = align1(render(blob(10, 0)), np.pi / 2, (4, 0), method)
    assert peak(out) == (C + 14, C)


@pytest.mark.parametrize("method", INTERPOLATIONS)
@pytest.mark.parametrize("n", [64, 63])
def test_quarter_turn_is_exact_permutation_about_n_half(method: str, n: int) -> None:
    # theta = +90 deg: A[row, col] = P[2c - col, row] with c = n//2; rotating about
    # (n-1)/2 instead would give a different permutation for even n.
    rng = np.random.default_rng(2)
    img = rng.standard_normal((n, n)).astype(np.float32)
    out = align1(img, np.pi / 2, (0, 0), method)
    c = n // 2
    expected = np.zeros_like(img)
    cols = np.arange(n)
    valid = 2 * c - cols < n
    expected[:, valid] = img[2 * c - cols[valid], :].T
    np.testing.assert_allclose(out, expected, atol=2e-5)
    if n % 2:
        np.testing.assert_allclose(out, np.rot90(img, k=-1), atol=2e-5)


@pytest.mark.parametrize("method", INTERPOLATIONS)
def test_identity_and_integer_shift(method: str) -> None:
    rng = np.random.default_rng(3)
    img = rng.standard_normal((N, N)).astype(np.float32)
    same = align1(img, 0.0, (0, 0), method)
    shifted = align1(img, 0.0, (3, -2), method)  # A[row, col] = P[row + 2, col - 3]
    expected = np.zeros_like(img)
    expected[: N - 2, 3:] = img[2:, : N - 3]
    if method == "linear":
        np.testing.assert_array_equal(same, img)
        np.testing.assert_array_equal(shifted, expected)
    else:
        np.testing.assert_allclose(same, img, atol=2e-6)
        np.testing.assert_allclose(shifted, expected, atol=2e-6)


def test_cubic_equals_scipy_spline_inside_box_and_zero_outside() -> None:
    rng = np.random.default_rng(4)
    images = rng.standard_normal((len(CASES), N, N)).astype(np.float32)
    angles = np.array([t for t, _ in CASES])
    shifts = np.array([s for _, s in CASES])
    out = align_images(images, angles, shifts)
    for k in range(len(CASES)):
        coords = source_coordinates(angles[k], shifts[k], N)
        inside = ((coords >= 0) & (coords <= N - 1)).all(axis=0)
        outside = ((coords < -1e-5) | (coords > N - 1 + 1e-5)).any(axis=0)
        ref = ndimage.map_coordinates(images[k].astype(np.float64), coords, order=3, mode="mirror")
        np.testing.assert_allclose(out[k][inside], ref[inside], atol=5e-6)
        assert outside.any() and np.all(out[k][outside] == 0)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 9, 17, 31, 64, 65])
def test_cubic_equals_scipy_spline_for_odd_even_and_tiny_boxes(n: int) -> None:
    # Float32 arithmetic only: within 1e-6 of the image's largest value (measured 5e-7).
    rng = np.random.default_rng(100 + n)
    images = rng.standard_normal((12, n, n)).astype(np.float32)
    angles, shifts = rng.uniform(-np.pi, np.pi, 12), rng.uniform(-3, 3, (12, 2))
    out = align_images(images, angles, shifts, "cubic")
    for k in range(12):
        coords = source_coordinates(angles[k], shifts[k], n)
        inside = ((coords >= 0) & (coords <= n - 1)).all(axis=0)
        ref = ndimage.map_coordinates(images[k].astype(np.float64), coords, order=3, mode="mirror")
        scale = np.abs(images[k]).max()
        np.testing.assert_allclose(out[k][inside], ref[inside], rtol=0, atol=1e-6 * scale)
        outside = ((coords < -1e-5) | (coords > n - 1 + 1e-5)).any(axis=0)
        assert np.all(out[k][outside] == 0)


def test_batching_and_threads_do_not_change_results() -> None:
    rng = np.random.default_rng(5)
    images = rng.standard_normal((10, N, N)).astype(np.float32)
    angles = rng.uniform(-np.pi, np.pi, 10)
    shifts = rng.uniform(-5, 5, (10, 2))
    threads = numba.get_num_threads()
    for method in INTERPOLATIONS:
        batch = align_images(images, angles, shifts, method)
        for k in range(10):
            one = align_images(images[k : k + 1], angles[k : k + 1], shifts[k : k + 1], method)
            np.testing.assert_array_equal(one[0], batch[k])
        numba.set_num_threads(1)
        try:
            np.testing.assert_array_equal(align_images(images, angles, shifts, method), batch)
        finally:
            numba.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [np.int16, np.float16, np.float64])
def test_dtypes_and_out(dtype: type) -> None:
    rng = np.random.default_rng(6)
    images = (rng.standard_normal((3, N, N)) * 100).astype(dtype)
    angles, shifts = rng.uniform(-3, 3, 3), rng.uniform(-2, 2, (3, 2))
    out = np.empty((3, N, N), dtype=np.float32)
    result = align_images(images, angles, shifts, out=out)
    assert result is out and result.dtype == np.float32
    np.testing.assert_array_equal(result, align_images(images.astype(np.float32), angles, shifts))


@pytest.mark.parametrize(
    "images, angles, shifts, kwargs",
    [
        (np.zeros((2, 8, 9)), [0, 0], [[0, 0]] * 2, {}),
        (np.zeros((8, 8)), [0], [[0, 0]], {}),
        (np.zeros((2, 8, 8)), [0], [[0, 0]] * 2, {}),
        (np.zeros((2, 8, 8)), [0, 0], [[0, 0, 0]] * 2, {}),
        (np.zeros((1, 8, 8)), [np.nan], [[0, 0]], {}),
        (np.zeros((1, 8, 8)), [0], [[0, 0]], {"interpolation": "sinc"}),
        (np.zeros((1, 8, 8)), [0], [[0, 0]], {"out": np.zeros((1, 8, 8))}),
    ],
)
def test_invalid_input(images: np.ndarray, angles: list, shifts: list, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        align_images(images, angles, shifts, **kwargs)


def test_out_must_not_overlap_images() -> None:
    images = np.zeros((1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError):
        align_images(images, [0.0], [[0.0, 0.0]], out=images)


RELION = "relion_stack_create"
RELION_ANGLES = np.array([0.0, 30.0, -45.0, 90.0, 137.5, -170.2])  # degrees
RELION_SHIFTS = np.array([[0, 0], [1.25, -0.5], [-2.3, 3.7], [0.5, 0.5], [4.1, -1.9], [-0.75, 2.2]])


def star_loop(block: str, labels: list[str], rows: list[str]) -> list[str]:
    header = [f"_rln{label} #{i + 1}" for i, label in enumerate(labels)]
    return ["# version 30001", "", f"data_{block}", "", "loop_", *header, *rows, ""]


def write_relion_star(path: Path, stack: Path, angles: np.ndarray, shifts: np.ndarray) -> None:
    """RELION 3.1 particle star: psi in degrees, origins in Angstrom (pixel size 2.0)."""
    optics = star_loop(
        "optics",
        ["OpticsGroup", "OpticsGroupName", "ImagePixelSize", "ImageSize", "ImageDimensionality",
         "Voltage", "SphericalAberration", "AmplitudeContrast"],
        [f"1 opticsGroup1 2.0 {N} 2 300 2.7 0.1"],
    )
    rows = [
        f"{k + 1:06d}@{stack} {a:.6f} {sx * 2.0:.6f} {sy * 2.0:.6f} 1"
        for k, (a, (sx, sy)) in enumerate(zip(angles, shifts))
    ]
    particles = star_loop(
        "particles", ["ImageName", "AnglePsi", "OriginXAngst", "OriginYAngst", "OpticsGroup"], rows
    )
    path.write_text("\n".join(optics + particles))


@pytest.mark.relion
def test_linear_reproduces_relion_stack_create(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    images = ndimage.gaussian_filter(rng.standard_normal((6, N, N)), (0, 1.5, 1.5))
    images = images.astype(np.float32)
    stack = tmp_path / "stack.mrcs"
    with mrcfile.new(stack, images) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = 2.0
    write_relion_star(tmp_path / "in.star", stack, RELION_ANGLES, RELION_SHIFTS)
    options = ["--i", "in.star", "--o", "out/aligned", "--apply_transformation", "--one_by_one"]
    subprocess.run([RELION, *options], cwd=tmp_path, check=True, capture_output=True)
    relion = mrcfile.read(tmp_path / "out" / "aligned.mrcs")
    linear = align_images(images, np.radians(RELION_ANGLES), RELION_SHIFTS, "linear")
    cubic = align_images(images, np.radians(RELION_ANGLES), RELION_SHIFTS, "cubic")
    scale = np.abs(images).max()
    # Whole box, including the zero-filled corners (measured max |diff| 3e-8 * scale).
    np.testing.assert_allclose(linear, relion, rtol=0, atol=1e-5 * scale)
    inside = disc(C - 1 - np.abs(RELION_SHIFTS).max())
    for k in range(len(images)):
        assert np.corrcoef(cubic[k][inside], relion[k][inside])[0, 1] > 0.99
