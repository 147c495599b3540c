"""Tests for csplugin.engines.ctf: RELION CTF formula, layouts, rotation, phase flip, Wiener."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from csplugin.engines.ctf import (
    CTFParams,
    WienerAccumulator,
    ctf_2d,
    electron_wavelength,
    evaluate_ctf,
    phase_flip,
)

KV, CS, Q0 = 300.0, 2.7, 0.1


def rotate(image: np.ndarray, theta_deg: float) -> np.ndarray:
    """Rotate about (N//2, N//2): the value at (x, y) moves to R(θ)(x, y), x = col, y = row."""
    n = image.shape[-1]
    c = n // 2
    y, x = np.indices(image.shape) - c
    t = np.deg2rad(theta_deg)
    src_x = np.cos(t) * x + np.sin(t) * y  # R(-θ) applied to the output point
    src_y = -np.sin(t) * x + np.cos(t) * y
    return map_coordinates(image, [src_y + c, src_x + c], order=3, mode="constant")


def blobs(n: int) -> np.ndarray:
    """Smooth, asymmetric, band-limited test image centred in an n x n box."""
    y, x = np.indices((n, n)) - n // 2
    img = np.zeros((n, n))
    blobs = [(-6, 3, 2.5, 1.0), (7, 5, 3.0, -0.7), (2, -8, 2.0, 1.5), (0, 0, 4.0, 0.5)]
    for (cx, cy, s, a) in blobs:
        img += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2))
    return img


def apply_ctf(images: np.ndarray, ctfs_rfft: np.ndarray) -> np.ndarray:
    n = images.shape[-1]
    return np.fft.irfft2(np.fft.rfft2(images) * ctfs_rfft, s=(n, n))


def test_wavelength_300kv() -> None:
    assert electron_wavelength(300.0) == pytest.approx(0.0196876, abs=1e-7)  # 0.019687... Å
    assert electron_wavelength(200.0) == pytest.approx(0.0250795, abs=1e-7)


def test_sign_at_low_frequency() -> None:
    # u = 0: γ = -K3, CTF = -sin(-asin(Q0)) = +Q0; it grows positive towards the first peak.
    full = ctf_2d(64, 1.0, CTFParams(15000.0, 15000.0, 0.0, KV, CS, Q0))
    assert full[32, 32] == pytest.approx(Q0, rel=1e-12)
    assert np.all(full[32, 33:35] > Q0)
    assert evaluate_ctf(0.0, 0.0, CTFParams(1e4, 1e4, 0, KV, CS, Q0,
                                            phase_shift=90.0)) == pytest.approx(
        np.cos(np.arcsin(Q0)))


def test_zero_crossings_at_analytic_frequencies() -> None:
    defocus, pixel, box = 10000.0, 1.5, 256
    lam = electron_wavelength(KV)
    a = 0.5 * np.pi * CS * 1e7 * lam**3
    b = -np.pi * lam * defocus
    ks = np.arange(1, 40)
    c = ks * np.pi - np.arcsin(Q0)  # γ(u) = -kπ  <=>  a s² + b s + c = 0 with s = u²
    u = np.sqrt((-b - np.sqrt(b**2 - 4 * a * c)) / (2 * a))
    beta = np.deg2rad(37.0)
    vals = evaluate_ctf(u * np.cos(beta), u * np.sin(beta), CTFParams(defocus, defocus, 12.0, KV,
                                                                      CS, Q0, bfactor=50.0))
    np.testing.assert_allclose(vals, 0.0, atol=1e-9)
    # the sampled profile along +x changes sign exactly once per analytic zero
    profile = ctf_2d(box, pixel, CTFParams(defocus, defocus, 0.0, KV, CS, Q0))[box // 2, box // 2:]
    u_grid = np.arange(box // 2) / (box * pixel)
    assert np.count_nonzero(np.diff(np.sign(profile))) == np.count_nonzero(u < u_grid[-1])


def test_astigmatism_direction() -> None:
    du, dv, angle = 20000.0, 10000.0, 30.0
    r = np.linspace(0.0, 0.3, 200)
    for direction, expected in [(angle, du), (angle + 90.0, dv)]:
        t = np.deg2rad(direction)
        astig = evaluate_ctf(r * np.cos(t), r * np.sin(t), CTFParams(du, dv, angle, KV, CS, Q0))
        iso = evaluate_ctf(r, 0.0, CTFParams(expected, expected, 0.0, KV, CS, Q0))
        np.testing.assert_allclose(astig, iso, atol=1e-12)


def test_grid_axes_x_is_column_y_is_row() -> None:
    box, pixel, du, dv = 128, 1.2, 20000.0, 8000.0
    full = ctf_2d(box, pixel, CTFParams(du, dv, 90.0, KV, CS, Q0))  # defocus_u along +y (rows)
    r = np.arange(box // 2) / (box * pixel)
    c = box // 2
    np.testing.assert_allclose(full[c:, c], evaluate_ctf(r, 0.0, CTFParams(du, du, 0, KV, CS, Q0)),
                               atol=1e-12)
    np.testing.assert_allclose(full[c, c:], evaluate_ctf(r, 0.0, CTFParams(dv, dv, 0, KV, CS, Q0)),
                               atol=1e-12)


@pytest.mark.parametrize("box", [63, 64])
def test_rfft_layout_matches_shifted_full_layout(box: int) -> None:
    args = (box, 1.3, CTFParams([12000.0, 18000.0], [9000.0, 17000.0], [25.0, -70.0], KV, CS, Q0))
    full = np.fft.ifftshift(ctf_2d(*args), axes=(-2, -1))
    half = ctf_2d(*args, rfft=True)
    assert half.shape == (2, box, box // 2 + 1) and full.shape == (2, box, box)
    if box % 2:
        np.testing.assert_allclose(half, full[..., : box // 2 + 1], atol=1e-12)
    else:
        np.testing.assert_allclose(half[..., :-1], full[..., : box // 2], atol=1e-12)
        # last rfft column is kx = +1/2, the full layout stores kx = -1/2: CTF(k) = CTF(-k).
        # The corner (kx, ky) = (+1/2, -1/2) has no counterpart in the full layout.
        rows = np.delete(np.arange(box), box // 2)
        np.testing.assert_allclose(half[:, rows, -1], full[:, (-rows) % box, box // 2], atol=1e-12)


def test_batched_equals_per_particle_and_rotation_adds_to_angle() -> None:
    du = np.array([10000.0, 15000.0, 21000.0])
    dv = du - np.array([500.0, 2000.0, 0.0])
    ang = np.array([0.0, 45.0, 170.0])
    rot = np.array([10.0, -30.0, 200.0])
    batch = ctf_2d(48, 1.0, CTFParams(du, dv, ang, KV, CS, Q0, bfactor=[0.0, 40.0, 80.0]),
                   rotation_deg=rot, rfft=True)
    assert batch.shape == (3, 48, 25)
    for i in range(3):
        one = ctf_2d(48, 1.0, CTFParams(du[i], dv[i], ang[i] + rot[i], KV, CS, Q0,
                                        bfactor=40.0 * i), rfft=True)
        np.testing.assert_allclose(batch[i], one, atol=1e-12)


def test_rotated_ctf_array_equals_ctf_with_rotated_angle() -> None:
    box, pixel, du, dv, angle, theta = 128, 2.0, 6000.0, 2000.0, 20.0, 50.0
    params = (KV, CS, Q0)
    ctf = ctf_2d(box, pixel, CTFParams(du, dv, angle, *params, bfactor=200.0))
    rotated = rotate(ctf, theta)
    y, x = np.indices((box, box)) - box // 2
    inside = x**2 + y**2 < (box // 2 - 4) ** 2
    right = ctf_2d(box, pixel, CTFParams(du, dv, angle + theta, *params, bfactor=200.0))
    wrong = ctf_2d(box, pixel, CTFParams(du, dv, angle - theta, *params, bfactor=200.0))
    err = np.abs(rotated - right)[inside].max()
    assert err < 5e-4
    assert np.abs(rotated - wrong)[inside].max() > 100 * err


def test_rotating_filtered_image_equals_filtering_rotated_image_with_angle_plus_theta() -> None:
    """Real-space check: rotate(CTF_a * img, θ) == CTF_{a+θ} * rotate(img, θ)."""
    box, pixel, du, dv, angle, theta = 64, 2.0, 3000.0, 1000.0, 20.0, 50.0
    img = blobs(box)

    def ctf(a: float) -> np.ndarray:
        return ctf_2d(box, pixel, CTFParams(du, dv, a, KV, CS, Q0, bfactor=50.0), rfft=True)

    lhs = rotate(apply_ctf(img, ctf(angle)), theta)
    right = apply_ctf(rotate(img, theta), ctf(angle + theta))
    wrong = apply_ctf(rotate(img, theta), ctf(angle - theta))
    scale = np.abs(lhs).max()
    err = np.abs(lhs - right).max() / scale
    assert err < 2e-3
    assert np.abs(lhs - wrong).max() / scale > 100 * err


@pytest.mark.parametrize("box", [63, 64])
def test_phase_flip(box: int) -> None:
    rng = np.random.default_rng(3)
    images = rng.normal(size=(3, box, box))
    ctfs = ctf_2d(box, 1.5, CTFParams([9000.0, 14000.0, 20000.0], [7000.0, 14000.0, 16000.0],
                                      [10.0, 0.0, 123.0], KV, CS, Q0), rfft=True)
    once = phase_flip(images, ctfs)
    twice = phase_flip(once, ctfs)
    spec, spec_once, spec_twice = (np.fft.rfft2(a) for a in (images, once, twice))
    cols = slice(None) if box % 2 else slice(None, -1)  # even box: Nyquist column is aliased
    np.testing.assert_allclose(spec_once[..., cols], (np.sign(ctfs) * spec)[..., cols], atol=1e-9)
    np.testing.assert_allclose(spec_twice[..., cols], spec[..., cols], atol=1e-9)
    if box % 2:
        np.testing.assert_allclose(twice, images, atol=1e-12)
    # flipping a CTF-modulated image yields |CTF| F
    np.testing.assert_allclose(np.fft.rfft2(phase_flip(apply_ctf(images, ctfs), ctfs))[..., cols],
                               (np.abs(ctfs) * spec)[..., cols], atol=1e-9)


def test_wiener_single_particle_recovers_image_away_from_zeros() -> None:
    box = 64
    img = blobs(box)
    ctf = ctf_2d(box, 2.0, CTFParams(12000.0, 9000.0, 40.0, KV, CS, Q0), rfft=True)
    acc = WienerAccumulator(box)
    acc.add(apply_ctf(img[None], ctf[None]), ctf[None])
    rec = np.fft.rfft2(acc.result(snr=1e9))
    good = np.abs(ctf) > 0.1
    good[:, -1] = False  # even box: aliased Nyquist column (see csplugin.engines.ctf docstring)
    np.testing.assert_allclose(rec[good], np.fft.rfft2(img)[good], atol=1e-6)


@pytest.mark.parametrize("premultiplied", [False, True])
def test_wiener_several_defoci_recovers_image(premultiplied: bool) -> None:
    box, n = 64, 8
    img = blobs(box)
    rng = np.random.default_rng(4)
    du = rng.uniform(8000, 25000, n)
    ctfs = ctf_2d(box, 2.0, CTFParams(du, du - rng.uniform(0, 2000, n), rng.uniform(0, 180, n), KV,
                                      CS, Q0), rfft=True)
    images = apply_ctf(np.broadcast_to(img, (n, box, box)), ctfs**2 if premultiplied else ctfs)
    weights = rng.uniform(0.5, 2.0, n)
    acc = WienerAccumulator(box)
    acc.add(images[:3], ctfs[:3], weights[:3], premultiplied=premultiplied)
    acc.add(images[3:], ctfs[3:], weights[3:], premultiplied=premultiplied)
    rec = acc.result(snr=1e9)
    np.testing.assert_allclose(rec, img, atol=1e-5 * np.abs(img).max())
    one_shot = WienerAccumulator(box)
    one_shot.add(images, ctfs, weights, premultiplied=premultiplied)
    np.testing.assert_allclose(one_shot.result(snr=1e9), rec, atol=1e-12)


def test_wiener_regularisation_shrinks_towards_zero() -> None:
    box = 32
    img = blobs(box)
    ctf = ctf_2d(box, 2.0, CTFParams(15000.0, 15000.0, 0.0, KV, CS, Q0), rfft=True)[None]
    acc = WienerAccumulator(box)
    acc.add(apply_ctf(img[None], ctf), ctf)
    expected = np.fft.irfft2(np.fft.rfft2(img) * ctf[0] ** 2 / (ctf[0] ** 2 + 1.0), s=(box, box))
    np.testing.assert_allclose(acc.result(snr=1.0), expected, atol=1e-12)


def test_validation() -> None:
    with pytest.raises(ValueError, match="amplitude_contrast"):
        ctf_2d(16, 1.0, CTFParams(1e4, 1e4, 0.0, KV, CS, 1.2))
    with pytest.raises(ValueError, match="voltage"):
        electron_wavelength(0.0)
    with pytest.raises(ValueError, match="pixel_size"):
        ctf_2d(16, 0.0, CTFParams(1e4, 1e4, 0.0, KV, CS, Q0))
    with pytest.raises(ValueError, match="rfft shape"):
        phase_flip(np.zeros((2, 16, 16)), np.zeros((2, 16, 16)))
    acc = WienerAccumulator(16)
    with pytest.raises(ValueError, match="images must have shape"):
        acc.add(np.zeros((2, 8, 8)), np.zeros((2, 8, 5)))
    with pytest.raises(ValueError, match="weights"):
        acc.add(np.zeros((2, 16, 16)), np.zeros((2, 16, 9)), np.ones(3))
    with pytest.raises(ValueError, match="snr"):
        acc.result(0.0)
