"""Averagers: ``averager.average(class_indices, class_refl, keys) -> (k, L, L)`` class averages.

Every averager is ``Averager(src, image_stacker=None, **options)`` and averages in pixel
space through the class-averages job's engine (:func:`csplugin.averaging.engine.average_class`):
members are read in chunks, mirrored if flagged, aligned in one resampling step
``A(q) = P(R(-θ) q - s)`` (:mod:`csplugin.core.conventions`), optionally CTF-corrected, and
stacked **per pixel** by ``image_stacker`` (any :class:`~csplugin.engines.stackers.ImageStacker`;
default :class:`~csplugin.engines.stackers.MeanImageStacker`, streamed). Memory per class: two
particle chunks, plus one pixel tile for order-statistic stackers (the aligned class is
spilled once to a temporary file in ``spill_dir``, see :mod:`csplugin.averaging.engine`).

Options (keyword, all averagers)
--------------------------------
``weights``
    ``"none"``, ``"posterior"`` (``class_posterior``) or an ``(src.n,)`` array, >= 0.
``ctf``
    ``"none"``, ``"phase-flip"`` or ``"wiener"`` (mean stacker only; per-class SNR kept in
    :attr:`Averager2D.snr`); ``wiener_snr`` fixes the SNR.
``interpolation``
    ``"cubic"`` (default) or ``"linear"``.
``chunk_size``, ``tile_bytes``, ``spill_dir``
    Streaming parameters (see :class:`~csplugin.averaging.engine.AveragingPlan`).

:class:`AligningAverager2D` splits averaging into :meth:`~AligningAverager2D.align` (find
``(θ, s)`` per member) and stacking with those alignments, and keeps the results per class
key in :attr:`~AligningAverager2D.rotations` (θ, rad), :attr:`~AligningAverager2D.shifts`
(s, px) and :attr:`~AligningAverager2D.dot_products`. :class:`StoredAlignmentAverager2D`
uses the file's alignments (no search; the default). The searching averagers live in
:mod:`csplugin.averaging.search_averagers`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from csplugin.averaging.classes import Ragged
from csplugin.averaging.engine import (
    CTF_MODES,
    AveragingPlan,
    average_class,
    check_ctf,
    particle_weights,
)
from csplugin.core.particles import ParticleTable
from csplugin.engines.stackers import ImageStacker, MeanImageStacker
from csplugin.engines.transform import INTERPOLATIONS

__all__ = ["Averager2D", "AligningAverager2D", "StoredAlignmentAverager2D", "Rows"]

#: Classes as the averagers take them: a :class:`Ragged`, a list of 1-D arrays or a 2-D array.
Rows = Ragged | Sequence[ArrayLike] | np.ndarray


def _rows(rows: Rows | None, like: list[np.ndarray], dtype: type) -> list[np.ndarray]:
    if rows is None:
        return [np.zeros(len(r), dtype) for r in like]
    out = [np.asarray(r, dtype).ravel() for r in rows]
    if len(out) != len(like) or any(a.size != b.size for a, b in zip(out, like)):
        raise ValueError("class_refl must have the same shape as class_indices")
    return out


class Averager2D(ABC):
    """Base class: the particle source, the image stacker and the averaging options.

    Parameters
    ----------
    src
        The particles (single pixel and box size).
    image_stacker
        Per-pixel stacker; None = :class:`~csplugin.engines.stackers.MeanImageStacker`.
    weights, ctf, wiener_snr, interpolation, chunk_size, tile_bytes, spill_dir
        See the module docstring.
    progress
        Called with the number of particles stacked after each chunk.

    Attributes
    ----------
    snr
        Class key -> Wiener SNR used (``ctf="wiener"`` only).
    """

    def __init__(self, src: ParticleTable, image_stacker: ImageStacker | None = None, *,
                 weights: str | ArrayLike = "none", ctf: str = "none",
                 wiener_snr: float | None = None, interpolation: str = "cubic",
                 chunk_size: int | None = None, tile_bytes: int = 32 << 20,
                 spill_dir: str | Path | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        if image_stacker is not None and not isinstance(image_stacker, ImageStacker):
            raise TypeError(f"image_stacker must be an ImageStacker, got {type(image_stacker)}")
        if ctf not in CTF_MODES:
            raise ValueError(f"ctf must be one of {CTF_MODES}, got {ctf!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, "
                             f"got {interpolation!r}")
        self.src = src
        self.image_stacker = image_stacker if image_stacker is not None else MeanImageStacker()
        if ctf == "wiener" and type(self.image_stacker) is not MeanImageStacker:
            raise ValueError("ctf='wiener' is a weighted mean in Fourier space; "
                             f"it cannot use {type(self.image_stacker).__name__}")
        if isinstance(weights, str):
            self.weights = particle_weights(src, weights)
        else:
            self.weights = np.asarray(weights, np.float64)
            if self.weights.shape != (src.n,) or not np.all(self.weights >= 0):
                raise ValueError(f"weights must be ({src.n},) and >= 0")
        if ctf != "none":
            check_ctf(src)
        self.plan = AveragingPlan.create(src, self.image_stacker, ctf=ctf, snr=wiener_snr,
                                         interpolation=interpolation, chunk_size=chunk_size,
                                         tile_bytes=tile_bytes, spill_dir=spill_dir)
        self.progress = progress
        self.snr: dict[int, float] = {}

    @property
    def box(self) -> int:
        """``L``: the particle (and average) size in pixels."""
        return self.plan.box

    @abstractmethod
    def average(self, class_indices: Rows, class_refl: Rows | None = None,
                keys: ArrayLike | None = None) -> np.ndarray:
        """Average classes.

        Parameters
        ----------
        class_indices
            ``k`` classes, each a 1-D array of member rows of ``src``.
        class_refl
            Per member: mirror before aligning (default: none).
        keys
            ``(k,)`` names under which per-class results are kept (default ``0 .. k-1``).

        Returns
        -------
        np.ndarray
            ``(k, L, L)`` float32.
        """

    def stack(self, members: np.ndarray, angles: np.ndarray, shifts: np.ndarray,
              mirror: np.ndarray, plan: AveragingPlan | None = None, *, report: bool = True
              ) -> tuple[np.ndarray, float]:
        """Stack ``members`` ``(m,)`` aligned by ``(θ, s)`` ``(m,)``, ``(m, 2)`` (mirrored where
        ``mirror``) with ``plan`` (default :attr:`plan`; ``report``: advance ``progress``):
        the average ``(L, L)`` float64 and the Wiener SNR used (NaN otherwise)."""
        table = self.src.take(members).with_columns(
            angle=angles, shift_x=shifts[:, 0], shift_y=shifts[:, 1], mirror=mirror)
        return average_class(table, self.src.images.stacks, self.weights[members],
                             plan or self.plan, self.progress if report else None)


class AligningAverager2D(Averager2D):
    """An averager in two stages: :meth:`align` finds ``(θ, s)`` per member, then the members
    are stacked with them. Results are kept per class key.

    Attributes
    ----------
    rotations, shifts, dot_products
        Key -> ``(m,)`` θ (radians), ``(m, 2)`` s (pixels) and correlation with the
        reference (NaN where no reference is used), for the members of that class in
        order: the aligned member is ``A(q) = P_M(R(-θ) q - s)`` (:mod:`csplugin.core.conventions`).
    members, mirrors
        Key -> ``(m,)`` member rows of ``src`` and their mirror flags.
    """

    def __init__(self, src: ParticleTable, image_stacker: ImageStacker | None = None,
                 **options: object) -> None:
        super().__init__(src, image_stacker, **options)  # type: ignore[arg-type]
        self.rotations: dict[int, np.ndarray] = {}
        self.shifts: dict[int, np.ndarray] = {}
        self.dot_products: dict[int, np.ndarray] = {}
        self.members: dict[int, np.ndarray] = {}
        self.mirrors: dict[int, np.ndarray] = {}

    @abstractmethod
    def align(self, class_indices: Rows, class_refl: Rows | None = None,
              keys: ArrayLike | None = None
              ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Align every member of every class.

        Returns
        -------
        (rotations, shifts, dot_products)
            Per class: ``(m,)`` θ radians, ``(m, 2)`` s pixels, ``(m,)`` correlations.
        """

    def average(self, class_indices: Rows, class_refl: Rows | None = None,
                keys: ArrayLike | None = None) -> np.ndarray:
        members = [np.asarray(r, np.int64).ravel() for r in class_indices]
        mirrors = _rows(class_refl, members, bool)
        keys = np.arange(len(members)) if keys is None else np.asarray(keys, np.int64)
        rotations, shifts, dots = self.align(members, mirrors, keys)
        out = np.empty((len(members), self.box, self.box), np.float32)
        for i, key in enumerate(keys.tolist()):
            self.members[key], self.mirrors[key] = members[i], mirrors[i]
            self.rotations[key], self.shifts[key] = rotations[i], shifts[i]
            self.dot_products[key] = dots[i]
            out[i], snr = self.stack(members[i], rotations[i], shifts[i], mirrors[i])
            if self.plan.ctf == "wiener":
                self.snr[key] = snr
        return out

    def agreement(self, tolerance_deg: float = 5.0) -> pd.DataFrame:
        """Found alignments against the stored ones, per averaged class.

        Meaningful when the search aligns to the stored class frame (stored classes,
        ``reference="stored"``): then a good classification gives differences near 0.
        Mirrored members are left out.

        Returns
        -------
        pandas.DataFrame
            One row per key: ``key``, ``members``, ``median_angle_error_deg``,
            ``max_angle_error_deg``, ``within_tolerance`` (fraction of members with
            ``|Δθ| <= tolerance_deg``), ``median_shift_error_px``.
        """
        p = self.src.particles
        rows = []
        for key, members in self.members.items():
            keep = ~self.mirrors[key]
            stored_angle = p["angle"].to_numpy()[members[keep]]
            stored_shift = p[["shift_x", "shift_y"]].to_numpy()[members[keep]]
            dtheta = np.degrees(np.abs(_wrap(self.rotations[key][keep] - stored_angle)))
            dshift = np.hypot(*(self.shifts[key][keep] - stored_shift).T)
            empty = dtheta.size == 0
            rows.append({"key": key, "members": int(keep.sum()),
                         "median_angle_error_deg": np.nan if empty else np.median(dtheta),
                         "max_angle_error_deg": np.nan if empty else dtheta.max(),
                         "within_tolerance": np.nan if empty else
                         float(np.mean(dtheta <= tolerance_deg)),
                         "median_shift_error_px": np.nan if empty else np.median(dshift)})
        return pd.DataFrame(rows, columns=["key", "members", "median_angle_error_deg",
                                           "max_angle_error_deg", "within_tolerance",
                                           "median_shift_error_px"])


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped into [-π, π)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


class StoredAlignmentAverager2D(AligningAverager2D):
    """Stack each member with its stored alignment (``angle``, ``shift_x/_y``): no search.

    The default averager: for a stored 2D class this rebuilds the class average exactly as
    ``csplugin class-averages`` does (same engine, options and result). ``dot_products``
    are NaN (no reference is formed). Mirrored members are refused: stored alignments
    describe the particles as recorded.
    """

    def align(self, class_indices: Rows, class_refl: Rows | None = None,
              keys: ArrayLike | None = None
              ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        members = [np.asarray(r, np.int64).ravel() for r in class_indices]
        if any(m.any() for m in _rows(class_refl, members, bool)):
            raise ValueError("stored alignments cannot be applied to mirrored members; "
                             "use a searching averager")
        angle = self.src.particles["angle"].to_numpy(np.float64)
        shift = self.src.particles[["shift_x", "shift_y"]].to_numpy(np.float64)
        return ([angle[m] for m in members], [shift[m] for m in members],
                [np.full(m.size, np.nan) for m in members])
