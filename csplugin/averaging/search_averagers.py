"""Averagers that search the alignment again: BFR, BFSR, Reddy–Chatterji, BFS + RC.

Each member is aligned to a per-class reference ``T`` (kernels in
:mod:`csplugin.averaging.search_kernels`), then stacked with the found ``(θ, s)`` like every
averager (per pixel, ``image_stacker``, weights, CTF).

``reference="stored"`` (default, for stored 2D classes)
    ``T`` is the class's stored-alignment average (weighted mean, no CTF correction), so
    the found ``(θ, s)`` live in the stored class frame and can be compared with the
    stored ones (:meth:`~csplugin.averaging.AligningAverager2D.agreement`): agreement
    validates the classification, disagreement flags particles or classes.
``reference="first"`` (neighbour networks)
    ``T`` is member 0's raw image (ASPIRE's reference-anchored frame); member 0 keeps
    ``θ = 0, s = 0``.

Trial shifts start from ``shift_origin``: ``"stored"`` (each member's stored shift; the
default with ``reference="stored"``) or ``"zero"`` (the default with ``"first"``).

Memory: members are read in chunks and searched in batches of at most
:data:`SEARCH_BYTES` of polar samples; the reference is one image.

Defaults differ from ASPIRE where the search starts from the stored shift: BFSR and
BFS-RC search a disc of radius ``L // 32`` px around it (ASPIRE: around 0; BFS-RC
``L // 8``).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from csplugin.averaging.averagers import AligningAverager2D, Rows, _rows
from csplugin.averaging.search_kernels import (
    bfs_rc_search,
    bfsr_search,
    rc_search,
    shift_grid,
)
from csplugin.core import conventions as cv
from csplugin.core.images import iter_chunks
from csplugin.core.particles import ParticleTable
from csplugin.engines.correlation import disc_correlations
from csplugin.engines.stackers import ImageStacker
from csplugin.engines.transform import align_images

__all__ = ["SearchingAverager2D", "BFRAverager2D", "BFSRAverager2D", "ReddyChatterjiAverager2D",
           "BFSReddyChatterjiAverager2D", "SEARCH_BYTES"]

#: Bytes of float32 polar samples searched at a time.
SEARCH_BYTES = 16 << 20

Reference = Literal["stored", "first"]
Origin = Literal["stored", "zero"]


class SearchingAverager2D(AligningAverager2D):
    """Base of the searching averagers: reference, trial-shift origin, streaming search.

    Parameters
    ----------
    src, image_stacker, **options
        As :class:`~csplugin.averaging.Averager2D`.
    reference
        ``"stored"`` or ``"first"`` (module docstring).
    shift_origin
        ``"stored"`` or ``"zero"``; default ``"stored"`` with ``reference="stored"``,
        ``"zero"`` with ``"first"``.
    n_angles
        Rotation grid (refined to sub-grid precision by a parabola).
    """

    def __init__(self, src: ParticleTable, image_stacker: ImageStacker | None = None, *,
                 reference: Reference = "stored", shift_origin: Origin | None = None,
                 n_angles: int = 360, **options: object) -> None:
        super().__init__(src, image_stacker, **options)
        if reference not in ("stored", "first"):
            raise ValueError(f"reference must be 'stored' or 'first', got {reference!r}")
        shift_origin = shift_origin or ("stored" if reference == "stored" else "zero")
        if shift_origin not in ("stored", "zero"):
            raise ValueError(f"shift_origin must be 'stored' or 'zero', got {shift_origin!r}")
        if n_angles < 8:
            raise ValueError(f"n_angles must be >= 8, got {n_angles}")
        self.reference, self.shift_origin, self.n_angles = reference, shift_origin, n_angles

    @abstractmethod
    def _search(self, images: np.ndarray, reference: np.ndarray, origins: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(θ (m,), s (m, 2))`` for raw (mirrored) members ``(m, L, L)`` and ``origins``
        ``(m, 2)``."""

    def _batch(self) -> int:
        """Members per kernel call."""
        return max(1, SEARCH_BYTES // (4 * self.n_angles * (self.box // 2) * self._trials()))

    def _trials(self) -> int:
        return 1

    def align(self, class_indices: Rows, class_refl: Rows | None = None,
              keys: ArrayLike | None = None
              ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        members = [np.asarray(r, np.int64).ravel() for r in class_indices]
        mirrors = _rows(class_refl, members, bool)
        stored = self.src.particles[["shift_x", "shift_y"]].to_numpy(np.float64)
        out: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        for rows, mirror in zip(members, mirrors):
            reference = self.reference_image(rows, mirror)
            origins = stored[rows] if self.shift_origin == "stored" else np.zeros((rows.size, 2))
            theta, shift = np.zeros(rows.size), np.zeros((rows.size, 2))
            dots = np.empty(rows.size)
            sub = self.src.take(rows)
            for chunk, raw in iter_chunks(sub, self.plan.chunk_size, self.src.images.stacks):
                if mirror[chunk].any():
                    raw[mirror[chunk]] = cv.mirror_y(raw[mirror[chunk]])
                for start in range(0, len(chunk), self._batch()):
                    part = chunk[start:start + self._batch()]
                    images = raw[start:start + len(part)]
                    theta[part], shift[part] = self._search(images, reference, origins[part])
                    dots[part] = disc_correlations(reference, align_images(
                        images, theta[part], shift[part], self.plan.interpolation))
            if self.reference == "first":  # the reference itself, unmoved
                theta[0], shift[0], dots[0] = 0.0, 0.0, 1.0
            out[0].append(theta)
            out[1].append(shift)
            out[2].append(dots)
        return out

    def reference_image(self, members: np.ndarray, mirrors: np.ndarray) -> np.ndarray:
        """The reference ``T`` ``(L, L)`` float64 of one class (module docstring)."""
        if self.reference == "first":
            image = self.src.images[int(members[0])]
            return (cv.mirror_y(image) if mirrors[0] else image).astype(np.float64)
        keep = members[~mirrors]
        if keep.size == 0:
            raise ValueError("reference='stored' needs unmirrored members")
        p = self.src.particles
        image, _ = self.stack(keep, p["angle"].to_numpy()[keep],
                              p[["shift_x", "shift_y"]].to_numpy()[keep],
                              np.zeros(keep.size, bool),
                              replace(self.plan, stacker=None, ctf="none"), report=False)
        return image


def _shift_trials(radius: float | None, box: int) -> tuple[float, np.ndarray]:
    """The shift search radius (default ``box // 32``) and its integer offsets ``(t, 2)``."""
    radius = box // 32 if radius is None else float(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return radius, shift_grid(radius)


class BFSRAverager2D(SearchingAverager2D):
    """Brute-force rotation and shift search (polar correlation, module docstring of
    :mod:`csplugin.averaging.search_kernels`) over integer shifts within ``radius`` of the origin.

    Parameters
    ----------
    radius
        Shift search radius in pixels (default ``L // 32``); 0 searches rotations only.
    """

    def __init__(self, src: ParticleTable, image_stacker: ImageStacker | None = None, *,
                 radius: float | None = None, **options: object) -> None:
        super().__init__(src, image_stacker, **options)  # type: ignore[arg-type]
        self.radius, self.offsets = _shift_trials(radius, self.box)

    def _trials(self) -> int:
        return len(self.offsets)

    def _search(self, images: np.ndarray, reference: np.ndarray, origins: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        return bfsr_search(images, reference, origins, self.offsets, self.n_angles)


class BFRAverager2D(BFSRAverager2D):
    """Brute-force rotation search only: shifts stay at the origin (the stored shift with
    ``reference="stored"``, 0 with ``"first"``)."""

    def __init__(self, src: ParticleTable, image_stacker: ImageStacker | None = None,
                 **options: object) -> None:
        if "radius" in options:
            raise TypeError("BFRAverager2D searches rotations only; use BFSRAverager2D(radius=...)")
        super().__init__(src, image_stacker, radius=0, **options)  # type: ignore[arg-type]


class ReddyChatterjiAverager2D(SearchingAverager2D):
    """Reddy–Chatterji registration: rotation from Fourier magnitudes, translation from a
    cross-correlation, independent of the stored alignment (shift origin unused).

    Parameters
    ----------
    max_shift
        Largest translation searched, pixels (default ``L / 4``).
    """

    def __init__(self, src: ParticleTable, image_stacker: ImageStacker | None = None, *,
                 max_shift: float | None = None, **options: object) -> None:
        super().__init__(src, image_stacker, **options)  # type: ignore[arg-type]
        self.max_shift = self.box / 4 if max_shift is None else float(max_shift)

    def _search(self, images: np.ndarray, reference: np.ndarray, origins: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        return rc_search(images, reference, self.n_angles, self.max_shift)


class BFSReddyChatterjiAverager2D(SearchingAverager2D):
    """Brute-force integer shifts within ``radius`` of the origin, an RC rotation for each;
    the trial correlating best with the reference (inscribed disc) wins.

    Parameters
    ----------
    radius
        Shift search radius in pixels (default ``L // 32``).
    """

    def __init__(self, src: ParticleTable, image_stacker: ImageStacker | None = None, *,
                 radius: float | None = None, **options: object) -> None:
        super().__init__(src, image_stacker, **options)  # type: ignore[arg-type]
        self.radius, self.offsets = _shift_trials(radius, self.box)

    def _trials(self) -> int:
        return 2 * len(self.offsets)  # image polar samples and half-turn spectra per trial

    def _search(self, images: np.ndarray, reference: np.ndarray, origins: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        return bfs_rc_search(images, reference, origins, self.offsets, self.n_angles)
