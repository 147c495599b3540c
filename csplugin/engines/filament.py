"""Geometry of a straight filament in a 2D class average (pure array maths, no file I/O).

* :func:`filament_axis_angle`: direction of the helical axis, from the *equator* of the
  average's power spectrum. A straight filament of length ``L`` (the chord of the box it
  crosses) concentrates the power of its projection along the axis on the central line of
  its Fourier transform perpendicular to the axis, with energy growing as ``L²`` against
  ``L`` for everything else (layer lines included); white noise adds the same power to every
  direction. So the direction of the strongest central line is the normal of the axis,
  whether the filament is thin or fills most of the box, oblique or not, and with noise. The
  angular profile (central-line power summed over radii 2 px .. a quarter of the padded plane)
  is found on a 0.5° grid and refined by a parabola.
* :func:`filament_axis_offset`: perpendicular distance of the axis from the box centre, as the
  centre of mirror symmetry of the density profile across the axis (peak of the profile's
  correlation with its mirror image, parabola-refined).
* :func:`turn_and_centre`: the average turned by the rotation applied to its spectrum and
  shifted across the axis so that the axis runs through ``(N//2, N//2)``.
* :func:`filament_masks`: per particle, a soft-edged rectangle along the class's helical axis,
  expressed in the raw (unaligned) particle frame, so each particle is still transformed once.

Angles follow :mod:`csplugin.engines.power_spectrum`: radians from +x (columns) towards +y
(rows), image coordinates relative to ``(N//2, N//2)``; the aligned particle is
``A(q) = P(R(-θ) q - s)`` (:func:`csplugin.engines.transform.align_images`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from csplugin.engines.transform import align_images

__all__ = ["apply_filament_masks", "filament_axis_angle", "filament_axis_offset", "filament_masks",
           "turn_and_centre"]


def _disc_taper(n: int) -> NDArray[np.float64]:
    y, x = np.mgrid[0:n, 0:n] - n // 2
    t = np.clip((np.hypot(x, y) - 0.4 * n) / (0.1 * n), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def filament_axis_angle(image: ArrayLike, *, step_deg: float = 0.5) -> float:
    """Direction of a filament's axis in an average (module docstring).

    Parameters
    ----------
    image : array_like, shape (N, N)
        Class average (either contrast).
    step_deg : float
        Grid of the angular search before the parabolic refinement.

    Returns
    -------
    float
        Axis direction in radians in ``[0, π)``, from +x towards +y.

    Raises
    ------
    ValueError
        A constant image.
    """
    img = np.asarray(image, dtype=np.float64)
    n = img.shape[0]
    taper = _disc_taper(n)
    img = (img - (img * taper).sum() / taper.sum()) * taper
    if not np.any(img):
        raise ValueError("image is constant")
    m = 2 * n
    power = np.abs(np.fft.fftshift(np.fft.fft2(img, s=(m, m)))) ** 2
    angles = np.deg2rad(np.arange(0.0, 180.0, step_deg))
    radii = np.arange(2.0, m / 4.0, 0.5)
    # a central line at direction a: points ±r (cos a, sin a); the spectrum is centrosymmetric
    rows = m // 2 + np.sin(angles)[:, None] * radii[None, :]
    cols = m // 2 + np.cos(angles)[:, None] * radii[None, :]
    values = ndimage.map_coordinates(power, [rows.ravel(), cols.ravel()], order=1).reshape(
        rows.shape)
    line = (values * radii[None, :]).sum(axis=1)  # weight r: finer rings are sharper in angle
    i = int(np.argmax(ndimage.uniform_filter1d(line, 3, mode="wrap")))
    # least-squares parabola over +-2 degrees (indices wrap around 180)
    k = np.arange(-max(2, round(2.0 / step_deg)), max(2, round(2.0 / step_deg)) + 1)
    coef = np.polyfit(k.astype(np.float64), line[(i + k) % len(line)], 2)
    frac = -coef[1] / (2 * coef[0]) if coef[0] < 0 else 0.0
    equator = (i + float(np.clip(frac, k[0], k[-1]))) * math.radians(step_deg)
    return float(np.mod(equator + math.pi / 2, math.pi))


def filament_axis_offset(image: ArrayLike, axis_angle: float) -> float:
    """Signed distance (px) of the filament's axis from the box centre along the normal
    ``(-sin a, cos a)`` of the axis direction ``a`` (module docstring)."""
    img = np.asarray(image, dtype=np.float64)
    n = img.shape[0]
    y, x = np.mgrid[0:n, 0:n] - n // 2
    across = -np.sin(axis_angle) * x + np.cos(axis_angle) * y
    along = np.cos(axis_angle) * x + np.sin(axis_angle) * y
    keep = np.abs(along) <= 0.3 * n  # a band along the axis, all of it inside the box
    edges = np.arange(-(n // 2), n - n // 2 + 1) - 0.5
    total, _ = np.histogram(across[keep], edges, weights=img[keep])
    count, _ = np.histogram(across[keep], edges)
    profile = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    profile = profile - np.median(profile)
    conv = np.convolve(profile, profile)  # conv[k] = sum_i p[i] p[k - i]
    # p(s) symmetric about s0 (bin centres s_i = i - N//2) pairs bins i + j = 2 s0 + 2 (N//2)
    k = int(np.argmax(conv))
    frac = 0.0
    if 0 < k < len(conv) - 1:
        a, b, c = conv[k - 1], conv[k], conv[k + 1]
        denom = a - 2 * b + c
        frac = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5)) if denom < 0 else 0.0
    return float(0.5 * (k + frac) - n // 2)


def turn_and_centre(image: ArrayLike, axis_angle: float, rotation: float,
                    offset: float | None = None) -> NDArray[np.float32]:
    """An average turned like its spectrum and centred across its axis.

    Parameters
    ----------
    image : array_like, shape (N, N)
        Class average in the class frame.
    axis_angle : float
        Its axis direction (radians).
    rotation : float
        Rotation applied to the class's spectrum (radians; direction ``φ`` goes to ``φ +
        rotation``, :func:`csplugin.engines.power_spectrum.axis_rotation`).
    offset : float, optional
        Axis offset from :func:`filament_axis_offset` (computed when omitted).

    Returns
    -------
    ndarray, shape (N, N), float32
        ``T(q) = A(R(-rotation) q + d·b)`` (cubic B-spline), ``b`` the axis normal and ``d`` the
        offset: the axis through the centre, turned by ``rotation``.
    """
    img = np.asarray(image, dtype=np.float32)
    d = filament_axis_offset(img, axis_angle) if offset is None else offset
    normal = np.array([-math.sin(axis_angle), math.cos(axis_angle)])
    # align_images: T(q) = A(R(-rot) q - s); with s = -d·normal the axis point d·normal -> 0
    return align_images(img[None], np.array([rotation]), -(d * normal)[None], "cubic")[0]


def filament_masks(box: int, width_px: float, angles: ArrayLike, shifts: ArrayLike,
                   axis_angle: float, offset: float = 0.0, *, length: float = 0.9,
                   edge: float = 0.05) -> NDArray[np.float32]:
    """Per-particle soft rectangles along a class's helical axis, in the raw particle frame.

    In the class frame the rectangle is ``|across - offset| <= width/2`` and ``|along| <=
    length·N/2`` about the axis (direction ``axis_angle``, through ``offset·b``), each edge a
    raised cosine ``edge·N`` wide outside it. The raw particle at ``p`` shows the class-frame
    point ``q = R(θ)(p + s)``, so the mask of each particle is evaluated there.

    Parameters
    ----------
    box : int
        ``N``.
    width_px : float
        Filament width, px.
    angles : array_like, shape (n,)
        Internal angles θ (radians).
    shifts : array_like, shape (n, 2)
        Internal shifts ``(s_x, s_y)``, px.
    axis_angle, offset : float
        The class's axis direction (radians) and offset (px, :func:`filament_axis_offset`).
    length, edge : float
        Rectangle length and soft-edge width as fractions of ``N``.

    Returns
    -------
    ndarray, shape (n, N, N), float32
    """
    angles = np.asarray(angles, dtype=np.float64)
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    grid = np.arange(box, dtype=np.float64) - box // 2
    px = grid[None, None, :] + shifts[:, 0, None, None]
    py = grid[None, :, None] + shifts[:, 1, None, None]
    c, s = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    qx, qy = c * px - s * py, s * px + c * py
    ca, sa = math.cos(axis_angle), math.sin(axis_angle)
    along = ca * qx + sa * qy
    across = -sa * qx + ca * qy - offset
    soft = max(edge * box, 1e-6)

    def ramp(distance: NDArray[np.float64], half: float) -> NDArray[np.float64]:
        t = np.clip((np.abs(distance) - half) / soft, 0.0, 1.0)
        return 0.5 * (1.0 + np.cos(np.pi * t))

    return (ramp(across, 0.5 * width_px) * ramp(along, 0.5 * length * box)).astype(np.float32)


def apply_filament_masks(images: ArrayLike, masks: ArrayLike, *, normalize: bool = True
                         ) -> NDArray[np.float32]:
    """Condition images under per-particle masks before the FFT.

    Each image is divided by its standard deviation over all pixels (``normalize``, as the
    circular-mask path does), then the *mask-weighted* mean is subtracted and the mask
    multiplied in: ``x' = (x - Σwx/Σw) · w``. The result has mean 0 exactly, so a later
    mean subtraction (padding) changes nothing and the fill outside the mask is at the level
    of the masked signal (no edge step).

    Returns
    -------
    ndarray, shape (n, N, N), float32
    """
    x = np.asarray(images, dtype=np.float32)
    w = np.asarray(masks, dtype=np.float32)
    if normalize:
        sd = x.reshape(len(x), -1).std(axis=1)
        x = x / np.where(sd > 0, sd, 1.0)[:, None, None].astype(np.float32)
    total = w.reshape(len(w), -1).sum(axis=1)
    mean = (x * w).reshape(len(x), -1).sum(axis=1) / np.where(total > 0, total, 1.0)
    return ((x - mean[:, None, None].astype(np.float32)) * w).astype(np.float32)
