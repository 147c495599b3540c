"""Averaged power spectra of aligned particles (pure engine, no file I/O).

The product is the *incoherent* average of the spectra of the aligned particles
of a 2D class, ``mean_i rot_theta_i(|F_i|^2)``, as used for helical indexing.

Conventions
-----------
* Real space: ``img[row, col]`` with ``x = col - N//2``, ``y = row - N//2``.  A
  particle with internal angle ``theta`` is aligned by rotating it by ``+theta``
  (:func:`csplugin.engines.transform.align_images`); shifts do not change ``|F|``.
* Fourier space: a *full plane* of shape ``(M, M)``, ``M = pad * N``, with the DC
  term at ``(M//2, M//2)`` (``numpy.fft.fftshift`` layout).  Axis 1 (columns) is
  ``kx``, axis 0 (rows) is ``ky``; pixel ``(r, c)`` is the frequency
  ``((c - M//2), (r - M//2)) / (M * pixel_size)``.  Rotating an image by ``+a``
  rotates this plane by ``+a`` about the DC pixel (same map as
  :func:`~csplugin.engines.transform.align_images`).
* The forward FFT is unnormalised: ``F(k) = sum_x f(x) exp(-2 pi i k.x / M)``.
  (RELION divides by ``N^2``, so its ``--avg_ampl2_ali`` is ours ``/ N^4``.)
* ``quantity="power"`` averages ``|F|^2``; ``quantity="amplitude"`` averages
  ``|F|`` (the mean amplitude, RELION's ``--avg_ampl``; *not* ``sqrt`` of the
  mean power).  Both are linear in the per-particle spectra, so binning and
  :meth:`PowerSpectrumAccumulator.merge` are exact for both.

Method
------
Each particle costs one FFT of its *unrotated* conditioned image.  Spectra are
summed into in-plane-angle bins (``psi_bin_deg`` wide, over ``[0, 180)`` degrees
because the spectra are centrosymmetric), together with each bin's count and
the sum of its members' angle offsets from the bin centre.  :meth:`result`
rotates every bin sum once, by the mean angle of its members (exact when the
angles are discrete), with bilinear interpolation.  Bilinear rather than cubic
because its weights are non-negative: rotated power stays >= 0 and the
weighted average used for detector-line suppression stays a convex
combination, whereas the cubic B-spline rings next to sharp peaks (DC, layer
lines): on a layer-line spectrum it produced negative power down to -1 % of the
peak (-70x the median).  Padding by 2 matters for this step: ``|F|^2`` of an
N-pixel image is the transform of a 2N-wide autocorrelation, so only the padded
plane samples it finely enough to be interpolated (against RELION's real-space
rotation, 2.7 % L2 difference at pad 2 vs 8.4 % at pad 1).

Cost: images are conditioned straight into the input of a cached pyfftw plan
(:mod:`csplugin.engines.fft`), transformed a batch at a time, and their power is added
from the plan's output into the half-plane bins (no per-image arrays); one FFT per
particle whatever the number of classes (:func:`add_spectra`).  The bins are rotated
straight from their half planes, spectrum, line-masked spectrum and mask in one pass per
bin, each thread taking its own bins and partial sums.

Detector lines
--------------
Detector-fixed artefacts (e.g. a gain-normalisation column) and the box edge
put energy on the ``kx = 0`` / ``ky = 0`` lines of every *unrotated* spectrum;
after rotation they pile up into radial streaks at the populated angles.  With
``suppress_detector_lines=True`` the bands ``|kx| <= w`` and ``|ky| <= w``,
``w = pad + pad // 2`` padded pixels (1 at pad 1, 3 at pad 2), get weight 0
before rotation.  A line confined to ~0.9 N pixels by the mask or box has a
main lobe of about +-1.5 unpadded Fourier pixels; with a column artefact at
~130 % streak contrast, ``w`` leaves < 1 % (the noise level), while at pad 2
``w = 0`` leaves ~30 % and ``w = 1, 2`` still ~1.5 %.  The rotated sums are
divided by the rotated weights (``sum_b rot_b(W * S_b) / sum_b n_b rot_b(W)``),
so particles rotated differently fill the masked pixels without bias.  Where
the total weight is below 5 % of the particle count (always at and just around
DC, in the rotated-out corners, and on the lines if all particles share one
angle) the plain, unsuppressed average is used instead.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from csplugin.core.memory import scratch
from csplugin.engines import fft
from csplugin.engines.spectrum_kernels import (
    _condition,
    condition_images,
    detector_line_weights,
    fourier_transform,
    half_to_full,
    rotate_bins,
    soft_circular_mask,
    spectra_half,
)

__all__ = [
    "PowerSpectrumAccumulator",
    "RotatedSums",
    "add_spectra",
    "axis_rotation",
    "condition_images",
    "crop_to_resolution",
    "detector_line_weights",
    "fourier_transform",
    "half_to_full",
    "profiles",
    "soft_circular_mask",
    "spectra_half",
    "to_log",
]

Quantity = Literal["power", "amplitude"]

#: Memory for the per-task partial sums of :meth:`PowerSpectrumAccumulator.rotated_sums`.
_ROTATION_BYTES = 48 << 20
_MIN_WEIGHT_FRACTION = 0.05  # below this share of the particles, fall back to the plain average


@dataclass
class RotatedSums:
    """Rotated spectrum sums of a set of particles; ``a + b`` pools two sets exactly.

    Attributes
    ----------
    plain : ndarray, shape (M, M), float64
        Sum of the rotated spectra, no line suppression.
    weighted, weight : ndarray, shape (M, M), float64, or None
        With detector-line suppression: the sum of rotated line-masked spectra and of the
        rotated masks (``None`` without suppression).
    camera : ndarray, shape (M, M//2 + 1), float64
        Sum of the *unrotated* spectra, rfft half layout (detector frame).
    n : int
        Number of particles.
    """

    plain: NDArray[np.float64]
    weighted: NDArray[np.float64] | None
    weight: NDArray[np.float64] | None
    camera: NDArray[np.float64]
    n: int

    def __add__(self, other: RotatedSums) -> RotatedSums:
        def add(a: NDArray[np.float64] | None, b: NDArray[np.float64] | None):
            return None if a is None or b is None else a + b

        if (self.weighted is None) != (other.weighted is None):
            raise ValueError("cannot pool sums with and without line suppression")
        return RotatedSums(self.plain + other.plain, add(self.weighted, other.weighted),
                           add(self.weight, other.weight), self.camera + other.camera,
                           self.n + other.n)

    def spectrum(self) -> NDArray[np.float32]:
        """The average spectrum ``(M, M)`` float32 (suppressed lines filled; module docstring)."""
        plain = self.plain / self.n
        if self.weighted is None or self.weight is None:
            return plain.astype(np.float32)
        ok = self.weight >= _MIN_WEIGHT_FRACTION * self.n
        return np.where(ok, self.weighted / np.where(ok, self.weight, 1.0), plain).astype(
            np.float32)

    def camera_frame(self) -> NDArray[np.float32]:
        """The average *unrotated* spectrum ``(M, M)`` float32, DC at ``M//2``."""
        return half_to_full(self.camera / self.n)


class PowerSpectrumAccumulator:
    """Streaming averaged power (or amplitude) spectrum of aligned particles.

    Parameters
    ----------
    box : int
        Particle box size ``N``.
    pad : int
        FFT size ``M = pad * N`` (zero padding after mean subtraction).
    mask : bool
        Apply :func:`soft_circular_mask` (radius 0.45 N, 0.05 N cosine edge)
        after mean subtraction.
    normalize : bool
        Normalise each image to mean 0, standard deviation 1.
        With ``mask=False, normalize=False, pad=1`` the raw images are
        transformed unchanged (RELION ``--avg_ampl2_ali`` semantics).
    suppress_detector_lines : bool
        Blank ``|kx|, |ky| <= pad + pad // 2`` in each unrotated spectrum
        (module docstring).
    psi_bin_deg : float
        Width of the in-plane angle bins in degrees (bins cover 0-180 degrees).
        Memory: ``M * (M//2 + 1) * 4`` bytes per populated bin (190 MB at
        N = 256, pad 2, 0.5 degrees with all 360 bins populated).  The float32
        sums round to ~1e-6 relative, ~1e-4 with 10^6 particles in one bin.
    quantity : {"power", "amplitude"}
        Average ``|F|^2`` or ``|F|``.
    """

    def __init__(
        self,
        box: int,
        *,
        pad: int = 2,
        mask: bool = True,
        normalize: bool = True,
        suppress_detector_lines: bool = True,
        psi_bin_deg: float = 0.5,
        quantity: Quantity = "power",
    ) -> None:
        if box < 2 or pad < 1:
            raise ValueError(f"need box >= 2 and pad >= 1, got box={box}, pad={pad}")
        if not 0 < psi_bin_deg <= 180:
            raise ValueError(f"psi_bin_deg must be in (0, 180], got {psi_bin_deg}")
        if quantity not in ("power", "amplitude"):
            raise ValueError(f"quantity must be 'power' or 'amplitude', got {quantity!r}")
        self.box, self.pad, self.quantity = box, pad, quantity
        self.mask, self.normalize = mask, normalize
        self.suppress_detector_lines = suppress_detector_lines
        self.size = pad * box
        self.n_bins = max(1, round(180.0 / psi_bin_deg))
        self._bin_width = math.pi / self.n_bins
        self._mask = soft_circular_mask(box) if mask else None
        # backed only where touched (unpopulated bins cost no memory), returned whole when freed
        self._sums = _mapped_zeros((self.n_bins, self.size, self.size // 2 + 1))
        self._counts = np.zeros(self.n_bins, dtype=np.int64)
        self._offsets = np.zeros(self.n_bins, dtype=np.float64)

    @property
    def n(self) -> int:
        """Number of particles added so far."""
        return int(self._counts.sum())

    def add(self, images: ArrayLike, angles: ArrayLike) -> None:
        """Add particles.

        Parameters
        ----------
        images : array_like, shape (n, N, N)
            Raw (unrotated, unshifted) particle images.
        angles : array_like, shape (n,)
            Internal in-plane angles ``theta`` in radians: the aligned particle
            is the image rotated by ``+theta``.
        """
        images = np.asarray(images)
        angles = np.asarray(angles, dtype=np.float64)
        box = self.box
        if images.ndim != 3 or images.shape[1:] != (box, box) or angles.shape != images.shape[:1]:
            raise ValueError(
                f"need images (n, {box}, {box}) and angles (n,), got {images.shape}, {angles.shape}"
            )
        add_spectra([self], images, angles, np.zeros(len(angles), np.int64))

    def psi_bins(self, angles: ArrayLike) -> NDArray[np.int64]:
        """The psi bin ``(n,)`` in ``[0, n_bins)`` that :meth:`add` puts each angle (rad) in.

        Particles in disjoint sets of bins give :meth:`rotated_sums` that add up to their
        union's (every bin is rotated by the mean angle of its own members), up to the order
        of the float sums over bins.
        """
        angles = np.asarray(angles, dtype=np.float64)
        return np.rint(np.mod(angles, math.pi) / self._bin_width).astype(np.int64) % self.n_bins

    def count(self, angles: ArrayLike) -> None:
        """Count particles with these angles (rad) into their bins: their number and angle
        offsets, from which :meth:`rotated_sums` takes each bin's rotation. :func:`add_spectra`
        does this with the power unless told not to."""
        angles = np.asarray(angles, dtype=np.float64)
        b = self.psi_bins(angles)
        # offset from the bin centre, wrapped into [-pi/2, pi/2)
        offsets = np.mod(angles - b * self._bin_width + math.pi / 2, math.pi) - math.pi / 2
        np.add.at(self._counts, b, 1)
        np.add.at(self._offsets, b, offsets)

    def merge(self, other: PowerSpectrumAccumulator) -> None:
        """Add the particles of ``other`` (same settings) to this accumulator, exactly."""
        keys = ("box", "pad", "mask", "normalize", "suppress_detector_lines", "n_bins", "quantity")
        if any(getattr(self, k) != getattr(other, k) for k in keys):
            raise ValueError("cannot merge accumulators with different settings")
        self._sums += other._sums
        self._counts += other._counts
        self._offsets += other._offsets

    def camera_frame(self) -> NDArray[np.float32]:
        """Average spectrum of the *unrotated* particles (detector frame).

        Detector-fixed artefacts show up directly as lines through DC.

        Returns
        -------
        ndarray, shape (M, M), float32
            Centred full plane (DC at ``M//2``), no line suppression.
        """
        self._check_not_empty()
        return half_to_full(self._sums.sum(axis=0, dtype=np.float64) / self.n)

    def result(self, extra_rotation: float = 0.0) -> NDArray[np.float32]:
        """Average spectrum of the aligned particles.

        Parameters
        ----------
        extra_rotation : float
            Additional rotation (radians) of the final spectrum, e.g. from
            :func:`axis_rotation`; folded into the per-bin rotation, so there is
            still a single interpolation step.

        Returns
        -------
        ndarray, shape (M, M), float32
            Centred full plane (DC at ``M//2``, columns ``kx``, rows ``ky``).
        """
        return self.rotated_sums(extra_rotation).spectrum()

    def rotated_sums(self, extra_rotation: float = 0.0) -> RotatedSums:
        """The bin sums rotated into the class frame (plus ``extra_rotation``) and added.

        Sums of several accumulators (e.g. one per class, each turned its own way) add up
        with ``+`` to the sums of their pooled particles, so a pooled spectrum never needs
        its own set of bins.
        """
        self._check_not_empty()
        m = self.size
        used = np.flatnonzero(self._counts)
        angles = used * self._bin_width + self._offsets[used] / self._counts[used] + extra_rotation
        suppress = self.suppress_detector_lines
        halfwidth = self.pad + self.pad // 2 if suppress else -1
        # one task per thread, each with its own partial sums (bins t, t + T, ...), at most
        # _ROTATION_BYTES of them (6 tasks at M = 512: many threads must not cost 7 MB each)
        per_task = (3 if suppress else 1) * m * m * 8 + m * (m // 2 + 1) * 8
        tasks = max(1, min(numba.get_num_threads(), len(used), _ROTATION_BYTES // per_task))
        # the calling thread's buffers, zeroed: no fresh pages (faults, unmapping) per call
        partial = scratch("rotation_partial", (tasks, 3 if suppress else 1, m, m), np.float64)
        cameras = scratch("rotation_cameras", (tasks, m, m // 2 + 1), np.float64)
        partial[...] = 0.0
        cameras[...] = 0.0
        rotate_bins(self._sums, used, np.cos(angles), np.sin(angles),
                     self._counts[used].astype(np.float32), halfwidth, partial, cameras)
        totals = partial.sum(axis=0)
        plain = totals[0]
        weighted, weight = (totals[1], totals[2]) if suppress else (None, None)
        camera = cameras.sum(axis=0)
        return RotatedSums(plain, weighted, weight, camera, self.n)

    def _check_not_empty(self) -> None:
        if self.n == 0:
            raise ValueError("no particles added")


def _mapped_zeros(shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Zeroed float32 array in its own anonymous memory mapping.

    Pages are backed only when first written and all go back to the OS when the array is
    freed. A heap ``np.zeros`` of the bins' size can instead be carved out of memory that the
    allocator already holds (then zero-filled, so every bin is resident at once) and, once
    freed, stay in its arenas: the next pass's bins then came on top (+190 MB per pass at
    box 256, pad 2).
    """
    size = math.prod(shape) * 4
    if size < 1 << 20:
        return np.zeros(shape, np.float32)
    return np.frombuffer(mmap.mmap(-1, size), np.float32).reshape(shape)


def add_spectra(accumulators: list[PowerSpectrumAccumulator], images: ArrayLike,
                angles: ArrayLike, owners: ArrayLike, *, n_threads: int | None = None,
                batch: int | None = None, count: bool = True) -> None:
    """Add particles to several accumulators of the same settings, one FFT per image.

    Parameters
    ----------
    accumulators
        Accumulators with equal ``box``, ``pad``, ``mask``, ``normalize``, ``quantity``
        (e.g. one per class).
    images : array_like, shape (n, N, N)
        Raw (unrotated, unshifted) particle images.
    angles : array_like, shape (n,)
        Internal in-plane angles in radians (see :meth:`PowerSpectrumAccumulator.add`).
    owners : array_like, shape (n,), int
        Index into ``accumulators`` of each image's accumulator; negative: leave the
        image out (it is not transformed).
    n_threads, batch
        FFTW threads and images per FFT batch (defaults: :func:`csplugin.core.threads.threads`
        and about :data:`csplugin.engines.fft.BATCH_BYTES` of output). A worker thread of
        :func:`csplugin.engines.parallel_spectra.accumulate_in_parallel` uses 1 thread and
        a batch that stays in its caches.
    count
        Also count the particles into their bins (their number and angle offsets). False
        for callers that add the power of disjoint bins from several threads and count
        once themselves (:meth:`PowerSpectrumAccumulator.count`).

    Each image is conditioned straight into the input of a cached FFT plan
    (:func:`csplugin.engines.fft.padded_rfft2`), transformed with the other images of its
    batch, and its ``|F|²`` (or ``|F|``) added from the plan's output into its psi bin on
    the half plane, in the order of ``images``; no per-image arrays are allocated.
    """
    if not accumulators:
        raise ValueError("no accumulators")
    first = accumulators[0]
    keys = ("box", "pad", "mask", "normalize", "quantity")
    if any(getattr(a, k) != getattr(first, k) for a in accumulators for k in keys):
        raise ValueError("accumulators differ in box, pad, mask, normalize or quantity")
    images = np.asarray(images)
    angles = np.asarray(angles, dtype=np.float64)
    owners = np.asarray(owners, dtype=np.int64)
    box = first.box
    if (images.ndim != 3 or images.shape[1:] != (box, box) or angles.shape != images.shape[:1]
            or owners.shape != angles.shape):
        raise ValueError(f"need images (n, {box}, {box}), angles (n,) and owners (n,), got "
                         f"{images.shape}, {angles.shape}, {owners.shape}")
    if owners.size and owners.max() >= len(accumulators):
        raise ValueError("owner index past the accumulators")
    keep = np.flatnonzero(owners >= 0)
    if keep.size == 0:
        return
    gather: NDArray[np.int64] | None = None  # images left out: gathered a batch at a time
    if keep.size != len(owners):
        gather, angles, owners = keep, angles[keep], owners[keep]
    images = np.ascontiguousarray(images, dtype=np.float32)
    bins = first.psi_bins(angles)
    subtract = first.mask or first.pad > 1
    plan = fft.padded_rfft2(box, first.size, batch=batch,
                            expected=max(len(owners), fft.MEASURE_FROM), n_threads=n_threads)
    weights = first._mask if first._mask is not None else np.ones((box, box), np.float32)
    plain = not subtract and not first.normalize and first._mask is None
    power = first.quantity == "power"
    for start in range(0, len(owners), plan.batch):
        k = min(plan.batch, len(owners) - start)
        target = plan.input[:k]
        batch_images = (images[start:start + k] if gather is None
                        else images[gather[start:start + k]])
        if plain:
            np.copyto(target, batch_images)
        else:
            _condition(batch_images, target, subtract or first.normalize, first.normalize,
                       weights)
        spectra = plan.execute(k)
        mine = owners[start:start + k]
        for a in np.unique(mine):
            slots = np.flatnonzero(mine == a)
            fft.accumulate_power(spectra, slots, bins[start + slots], accumulators[a]._sums,
                                 power)
    if count:
        for a in np.unique(owners):
            accumulators[a].count(angles[owners == a])


def axis_rotation(axis_angle: float, target: Literal["class", "vertical", "horizontal"]) -> float:
    """Rotation that puts a filament axis along y or x.

    Rotating by ``+a`` maps a direction at angle ``phi`` (from +x towards +y)
    to ``phi + a``; the result is the smallest such ``a`` (in ``[-pi/2, pi/2)``).

    Parameters
    ----------
    axis_angle : float
        Axis direction in radians (e.g. from :func:`csplugin.engines.filament.filament_axis_angle`).
    target : {"class", "vertical", "horizontal"}
        ``"class"``: keep the class-average frame (returns 0);
        ``"vertical"``: axis along y / rows (HILL, Bsoft);
        ``"horizontal"``: axis along x / columns (RELION).

    Returns
    -------
    float
        Rotation in radians, for :meth:`PowerSpectrumAccumulator.result`.
    """
    goal = {"class": None, "vertical": math.pi / 2, "horizontal": 0.0}[target]
    if goal is None:
        return 0.0
    return float(np.mod(goal - axis_angle + math.pi / 2, math.pi) - math.pi / 2)


def profiles(
    spectrum: ArrayLike, pixel_size_A: float, axis: Literal["vertical", "horizontal"] = "vertical"
) -> dict[str, NDArray[np.float64]]:
    """1D profiles of a centred spectrum.

    Parameters
    ----------
    spectrum : array_like, shape (M, M)
        Centred full plane (DC at ``M//2``), cropped or not.
    pixel_size_A : float
        Pixel size that puts Nyquist at the plane's edge: the particles' pixel
        size for an uncropped (padded or not) spectrum, the effective pixel
        size from :func:`crop_to_resolution` for a cropped one.  The frequency
        spacing is ``1 / (M * pixel_size_A)``.
    axis : {"vertical", "horizontal"}
        Where the helical axis lies.  ``"vertical"`` (``--axis vertical``):
        meridian = column through DC (``ky``), equator = row through DC
        (``kx``).  ``"horizontal"`` (``--axis horizontal``): swapped.  For
        ``--axis class`` the axis is oblique and only ``radial`` is meaningful.

    Returns
    -------
    dict
        ``"frequency"`` (1/Å), ``"meridian"``, ``"equator"``, ``"radial"``, all of
        shape ``(M//2 + 1,)`` for ``k = 0 .. M//2`` pixels from DC.  Meridian and
        equator average the ``+k`` and ``-k`` sides (where both exist); radial is
        the mean over 1-pixel rings ``round(|k|) = k``.
    """
    s = np.asarray(spectrum, dtype=np.float64)
    m = s.shape[0]
    c = m // 2
    y, x = np.mgrid[0:m, 0:m] - c
    ring = np.rint(np.hypot(x, y)).astype(np.int64).ravel()
    keep = ring <= c
    ring, values = ring[keep], s.ravel()[keep]
    radial = np.bincount(ring, values, c + 1) / np.bincount(ring, minlength=c + 1)
    column, row = _fold(s[:, c]), _fold(s[c, :])
    meridian, equator = (column, row) if axis == "vertical" else (row, column)
    return {
        "frequency": np.arange(c + 1) / (m * pixel_size_A),
        "meridian": meridian,
        "equator": equator,
        "radial": radial,
    }


def _fold(line: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean of the two sides of a centred line at distances ``0 .. M//2`` from DC."""
    c = len(line) // 2
    total = line[c::-1].copy()
    count = np.ones_like(total)
    pos = line[c:]
    total[: len(pos)] += pos
    count[: len(pos)] += 1
    return total / count


def crop_to_resolution(
    spectrum: ArrayLike, pixel_size_A: float, resolution_A: float
) -> tuple[NDArray[np.float32], float]:
    """Crop a centred spectrum so that its edge is at ``resolution_A``.

    Parameters
    ----------
    spectrum : array_like, shape (M, M)
        Centred full plane (DC at ``M//2``), Nyquist ``1/(2 pixel_size_A)`` at
        the edge.
    pixel_size_A : float
        Particle pixel size in Å.
    resolution_A : float
        Resolution of the new edge (>= Nyquist resolution ``2 * pixel_size_A``).

    Returns
    -------
    cropped : ndarray, shape (K, K), float32
        ``K = 2 h`` with ``h = round(M * pixel_size_A / resolution_A)`` pixels
        from DC to the edge; DC at ``K//2``.
    effective_pixel_size : float
        Header pixel size ``M * pixel_size_A / K`` (= ``resolution_A / 2`` up to
        the rounding of ``K``), so that "Nyquist = 2 x pixel size at the edge"
        still holds and the frequency spacing is unchanged.
    """
    s = np.asarray(spectrum, dtype=np.float32)
    m = s.shape[0]
    if resolution_A < 2 * pixel_size_A:
        raise ValueError(f"resolution {resolution_A} Å is beyond Nyquist ({2 * pixel_size_A} Å)")
    h = max(1, min(m // 2, round(m * pixel_size_A / resolution_A)))
    c = m // 2
    return s[c - h : c + h, c - h : c + h].copy(), m * pixel_size_A / (2 * h)


def to_log(spectrum: ArrayLike) -> NDArray[np.float32]:
    """``log10(1 + spectrum / median)``, the median taken over positive pixels.

    Scale-free (the same for power in any units), 0 where the spectrum is 0
    (e.g. rotated-out corners), and the typical pixel maps to ``log10(2)``.

    Parameters
    ----------
    spectrum : array_like, shape (M, M)

    Returns
    -------
    ndarray, shape (M, M), float32
    """
    s = np.maximum(np.asarray(spectrum, dtype=np.float64), 0.0)
    positive = s[s > 0]
    scale = np.median(positive) if positive.size else 1.0
    return np.log10(1.0 + s / scale).astype(np.float32)
