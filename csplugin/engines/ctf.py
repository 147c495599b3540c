"""2D contrast transfer function (RELION convention), phase flipping and Wiener averaging.

CTF formula (RELION ``CTF::initialise`` / ``CTF::getCTF``, ``src/ctf.cpp`` and
``src/ctf.h``) for a spatial frequency ``(kx, ky)`` in 1/Å, ``u² = kx² + ky²``
and direction ``α = atan2(ky, kx)``::

    Δf(α)  = (ΔfU + ΔfV)/2 + (ΔfU − ΔfV)/2 · cos(2(α − φ))     φ = rlnDefocusAngle (rad)
    λ      = 12.2643247 / sqrt(V · (1 + V · 0.978466e-6))        Å, V in volts
    γ      = −π λ Δf(α) u² + (π/2) Cs λ³ u⁴ − K5 − K3
    K3     = atan(Q0 / sqrt(1 − Q0²)) = asin(Q0),  K5 = phase shift (rad)
    CTF    = −sin(γ) · exp(−B u² / 4) · scale                    Cs in Å (= mm · 1e7)

RELION writes ``K1 = π/2 · 2 · λ = πλ`` and stores the *negated* mean defocus
(``defocus_average = −(ΔfU + ΔfV)/2``), hence the minus sign on the defocus
term. Positive defocus is underfocus. At ``u = 0`` the CTF is ``sin(K3) = Q0 > 0``
and it stays positive up to the first zero: RELION's CTF is positive at low
frequency. RELION additionally clamps ``|CTF| < 1e-8`` to ``±1e-8``; this
module does not.

Frequency grids (``N = box``, ``p = pixel_size`` in Å):

* x is the column axis (last axis), y the row axis (second to last);
* full layout ``(N, N)``: ``fftshift`` order, zero frequency at
  ``[N//2, N//2]``, ``kx = fftshift(fftfreq(N))[col] / p``, likewise ``ky``;
* rfft layout ``(N, N//2 + 1)``: the unshifted layout of ``np.fft.rfft2``,
  ``ky = fftfreq(N)[row] / p``, ``kx = rfftfreq(N)[col] / p``.

For even ``N`` the Nyquist frequency is aliased: the full layout uses −0.5/p
on row/column 0, the rfft layout uses ky = −0.5/p on row N/2 and kx = +0.5/p
on the last column (numpy's choices). With astigmatism the last rfft column is
then not symmetric under ky → −ky, so a product with it is not exactly the
spectrum of a real image; ``irfft2`` drops the inconsistent part of that column.

Rotated particles: if a particle image is rotated by θ (the point ``(x, y)``,
``x = col − N//2``, ``y = row − N//2``, moves to ``R(θ)(x, y)`` with
``R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]``), its Fourier transform rotates
the same way, so the CTF in the rotated (aligned) frame is the CTF with
astigmatism angle ``φ + θ``. Pass ``rotation_deg=θ`` to :func:`ctf_2d` (same as
adding θ to ``defocus_angle``). Translations do not change the CTF.
Because y runs down the rows, +θ is clockwise when row 0 is drawn at the top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from csplugin.engines import fft
from csplugin.engines.stackers import check_weights

__all__ = [
    "CTFParams",
    "electron_wavelength",
    "evaluate_ctf",
    "ctf_2d",
    "phase_flip",
    "WienerAccumulator",
]


@dataclass(frozen=True)
class CTFParams:
    """CTF parameters in RELION's units, each a scalar or a per-particle ``(n,)`` array
    (they broadcast to a common particle shape ``S``).

    Attributes
    ----------
    defocus_u, defocus_v
        Defocus in Å (positive = underfocus; RELION ``rlnDefocusU/V``).
    defocus_angle
        Astigmatism angle φ in degrees from the x (column) axis towards y (row), the
        direction of ``defocus_u`` (RELION ``rlnDefocusAngle``).
    voltage, cs, amplitude_contrast
        Acceleration voltage (kV), spherical aberration (mm), amplitude contrast Q0 in [0, 1].
    phase_shift, bfactor, scale
        Phase-plate shift (degrees), B-factor (Å², envelope ``exp(−B u²/4)``), overall scale.
    """

    defocus_u: ArrayLike
    defocus_v: ArrayLike
    defocus_angle: ArrayLike
    voltage: ArrayLike
    cs: ArrayLike
    amplitude_contrast: ArrayLike
    phase_shift: ArrayLike = 0.0
    bfactor: ArrayLike = 0.0
    scale: ArrayLike = 1.0

    #: Columns of csplugin's particle table holding each field (phase shift, B-factor and
    #: scale optional: NaN or absent count as 0, 0 and 1).
    COLUMNS = {"defocus_u": "defocus_u", "defocus_v": "defocus_v",
               "defocus_angle": "defocus_angle", "voltage": "voltage", "cs": "cs",
               "amplitude_contrast": "amplitude_contrast", "phase_shift": "phase_shift",
               "bfactor": "bfactor", "scale": "ctf_scale"}

    @classmethod
    def from_columns(cls, columns: Mapping[str, ArrayLike]) -> CTFParams:
        """Per-particle parameters from the particle table's CTF columns (``(n,)`` each,
        names in :attr:`COLUMNS`)."""
        optional = {"phase_shift": 0.0, "bfactor": 0.0, "scale": 1.0}
        values = {}
        for field, column in cls.COLUMNS.items():
            if field in optional:
                raw = columns[column] if column in columns else optional[field]
                values[field] = np.nan_to_num(np.asarray(raw, np.float64), nan=optional[field])
            else:
                values[field] = np.asarray(columns[column], np.float64)
        return cls(**values)

    def rotated(self, rotation_deg: ArrayLike) -> CTFParams:
        """The CTF of the image rotated by θ = ``rotation_deg``: astigmatism angle φ + θ."""
        return replace(self, defocus_angle=np.asarray(self.defocus_angle, np.float64)
                       + np.asarray(rotation_deg, np.float64))


def electron_wavelength(voltage_kv: ArrayLike) -> np.ndarray:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV.

    ``λ = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))``, ``V`` in volts (RELION);
    0.019687 Å at 300 kV.
    """
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    if np.any(v <= 0):
        raise ValueError(f"voltage_kv must be > 0, got {voltage_kv}")
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def evaluate_ctf(kx: ArrayLike, ky: ArrayLike, ctf: CTFParams) -> np.ndarray:
    """CTF at arbitrary spatial frequencies (module docstring has the formula).

    Parameters
    ----------
    kx, ky
        Spatial frequencies in 1/Å, broadcastable to a common frequency shape ``F``.
    ctf
        The parameters; they broadcast to a common particle shape ``S`` (scalars or
        arrays of shape ``(n,)``).

    Returns
    -------
    np.ndarray
        float64, shape ``S + F``.
    """
    params = np.broadcast_arrays(
        *(np.asarray(p, dtype=np.float64) for p in (
            ctf.defocus_u, ctf.defocus_v, ctf.defocus_angle, ctf.voltage, ctf.cs,
            ctf.amplitude_contrast, ctf.phase_shift, ctf.bfactor, ctf.scale))
    )
    kx, ky = np.broadcast_arrays(np.asarray(kx, dtype=np.float64), np.asarray(ky, dtype=np.float64))
    expand = (...,) + (None,) * kx.ndim
    du, dv, ang, kv, cs, q0, phase, bfac, scl = (p[expand] for p in params)
    if np.any((q0 < 0) | (q0 > 1)):
        raise ValueError(f"amplitude_contrast must be in [0, 1], got {ctf.amplitude_contrast}")
    lam = electron_wavelength(kv)
    phi = np.deg2rad(ang)
    u2 = kx**2 + ky**2
    # u² Δf(α) as a quadratic form: u² cos 2(α − φ) = (kx² − ky²) cos 2φ + 2 kx ky sin 2φ
    defocus_u2 = 0.5 * (du + dv) * u2 + 0.5 * (du - dv) * (
        np.cos(2 * phi) * (kx**2 - ky**2) + np.sin(2 * phi) * (2 * kx * ky))
    gamma = (-np.pi * lam * defocus_u2 + 0.5 * np.pi * (cs * 1e7) * lam**3 * u2**2
             - np.deg2rad(phase) - np.arcsin(q0))
    return -np.sin(gamma) * np.exp(-0.25 * bfac * u2) * scl


def ctf_2d(
    box: int,
    pixel_size: float,
    ctf: CTFParams,
    *,
    rotation_deg: ArrayLike = 0.0,
    rfft: bool = False,
) -> np.ndarray:
    """CTF images on the Fourier grid of a ``box × box`` image.

    Parameters
    ----------
    box, pixel_size
        Image size in pixels and pixel size in Å; frequencies are
        ``fftfreq(box) / pixel_size`` (1/Å), x along columns, y along rows.
    ctf
        The parameters (scalars or per-particle arrays of shape ``(n,)``).
    rotation_deg
        In-plane rotation θ (degrees, per particle or scalar) that has been
        applied to the particle image; the CTF is rendered in the rotated frame,
        i.e. with astigmatism angle ``ctf.defocus_angle + rotation_deg``.
    rfft
        False: full plane in fftshift layout, zero frequency at
        ``[box//2, box//2]``. True: unshifted ``np.fft.rfft2`` layout.

    Returns
    -------
    np.ndarray
        float64, shape ``S + (box, box)`` (full) or ``S + (box, box//2 + 1)``
        (rfft), where ``S`` is the broadcast shape of the parameters (``()``
        for scalars, ``(n,)`` for per-particle arrays). Memory is
        ``8 · n · box²`` bytes for the full layout: render in particle chunks.
    """
    if box < 1:
        raise ValueError(f"box must be >= 1, got {box}")
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    if rfft:
        ky = np.fft.fftfreq(box)[:, None] / pixel_size
        kx = np.fft.rfftfreq(box)[None, :] / pixel_size
    else:
        ky = np.fft.fftshift(np.fft.fftfreq(box))[:, None] / pixel_size
        kx = np.fft.fftshift(np.fft.fftfreq(box))[None, :] / pixel_size
    return evaluate_ctf(kx, ky, ctf.rotated(rotation_deg))


def _check_pair(images: np.ndarray, ctfs: np.ndarray) -> int:
    """Check ``images`` ``(..., N, N)`` against ``ctfs`` ``(..., N, N//2+1)``; return N."""
    if images.ndim < 2 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must have shape (..., N, N), got {images.shape}")
    n = images.shape[-1]
    if ctfs.shape != images.shape[:-1] + (n // 2 + 1,):
        raise ValueError(f"ctfs must have the rfft shape {images.shape[:-1] + (n // 2 + 1,)} "
                         f"for images of shape {images.shape}, got {ctfs.shape}")
    return n


def phase_flip(images: ArrayLike, ctfs_rfft: ArrayLike) -> np.ndarray:
    """Multiply each image's Fourier transform by the sign of its CTF.

    Parameters
    ----------
    images
        Real-space images ``(n, N, N)`` (or one ``(N, N)``).
    ctfs_rfft
        CTFs in rfft layout ``(n, N, N//2 + 1)`` (``ctf_2d(..., rfft=True)``)
        in the same frame as the images. Zero CTF values count as positive, so
        the sign is always ±1 and flipping twice is the identity (up to the
        even-``N`` Nyquist-column caveat in the module docstring).

    Returns
    -------
    np.ndarray
        float64 real-space images, same shape as ``images``.
    """
    images = np.asarray(images)
    ctfs = np.asarray(ctfs_rfft)
    n = _check_pair(images, ctfs)
    sign = np.where(ctfs < 0, -1.0, 1.0)
    return fft.irfft2(fft.rfft2(images, expected=len(images)) * sign, s=(n, n),
                      expected=len(images))


class WienerAccumulator:
    """Streaming Wiener-filtered class average.

    Accumulates, over particles i with weights w_i (rfft layout, float64)::

        numerator   = Σ w_i CTF_i F_i        (premultiplied data: Σ w_i F_i)
        denominator = Σ w_i CTF_i²

    and returns ``irfft2(numerator / (denominator + 1/snr))``.

    Images must already be aligned (rotated and shifted into the class frame)
    and the CTFs must be expressed in that aligned frame: render them with
    ``ctf_2d(..., rotation_deg=θ_i, rfft=True)`` where θ_i is the rotation
    applied to particle i (see the module docstring).

    For CTF-premultiplied data (RELION ``rlnCtfDataAreCtfPremultiplied = 1``)
    the images already carry one factor of the CTF, so pass
    ``premultiplied=True``: the numerator then uses ``F_i`` as is, while the
    denominator is still ``Σ w CTF²``.

    Parameters
    ----------
    box
        Image size N.
    """

    def __init__(self, box: int) -> None:
        if box < 1:
            raise ValueError(f"box must be >= 1, got {box}")
        self.box = box
        #: Σ w·CTF·F (Σ w·F for premultiplied data), rfft layout ``(N, N//2+1)``.
        self.numerator = np.zeros((box, box // 2 + 1), dtype=np.complex128)
        #: Σ w·CTF², rfft layout ``(N, N//2+1)``.
        self.denominator = np.zeros((box, box // 2 + 1))

    def add(
        self,
        images: ArrayLike,
        ctfs: ArrayLike,
        weights: ArrayLike | None = None,
        *,
        premultiplied: bool = False,
    ) -> None:
        """Accumulate aligned images ``(n, N, N)`` with CTFs ``(n, N, N//2+1)``.

        ``weights`` is ``(n,)``, non-negative, or None for ones.
        """
        images = np.asarray(images)
        ctfs = np.asarray(ctfs, dtype=np.float64)
        if images.ndim != 3 or images.shape[-1] != self.box:
            raise ValueError(f"images must have shape (n, {self.box}, {self.box}), "
                             f"got {images.shape}")
        _check_pair(images, ctfs)
        w = check_weights(weights, images.shape[0])
        spectra = fft.rfft2(images, expected=len(images))
        if not premultiplied:
            spectra *= ctfs
        self.numerator += np.tensordot(w, spectra, axes=1)
        self.denominator += np.tensordot(w, ctfs**2, axes=1)

    def merge(self, other: WienerAccumulator) -> WienerAccumulator:
        """Add ``other``'s sums (same box) to this accumulator; returns ``self``."""
        if other.box != self.box:
            raise ValueError(f"cannot merge boxes {other.box} and {self.box}")
        self.numerator += other.numerator
        self.denominator += other.denominator
        return self

    def result(self, snr: float) -> np.ndarray:
        """Wiener-filtered average, float64 ``(N, N)``; ``snr`` > 0 sets the 1/snr term."""
        if not snr > 0:
            raise ValueError(f"snr must be > 0, got {snr}")
        return fft.irfft2(self.numerator / (self.denominator + 1.0 / snr),
                          s=(self.box, self.box))
