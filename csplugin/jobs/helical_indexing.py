"""The helical part of the power-spectrum job: half sets, class averages, layer lines,
symmetry candidates and the files people and indexing tools read.

Called by :func:`csplugin.jobs.power_spectrum.power_spectra` once the class spectra are
summed. Per class it

1. turns the average rebuilt from the class's particles exactly as its spectrum (same axis
   angle, same rotation) and centres it across the axis
   (:func:`csplugin.engines.filament.turn_and_centre`);
2. detects layer lines in the class spectrum (axis vertical; a ``horizontal`` spectrum is
   transposed, a ``class``-frame one turned for the detection only), with the agreement of
   the two half-set spectra along each (:func:`csplugin.engines.layer_lines.detect_layer_lines`);
3. ranks helical lattices (rise, twist, Cn) that explain them
   (:func:`csplugin.engines.helical_index.index_helix`) for a helix radius range given by the
   user or estimated from the width of the turned average;

and writes (names in the job's output directory)

==============================  ============================================================
``ps_classes.mrcs``             every class spectrum, one slice each, in ``stack_order``
``ps_classes_half1/2.mrcs``     the same for the two half sets (split by filament)
``class_averages.mrcs``         each class's average, turned and centred like its spectrum
``layer_lines.csv``             ``class, height_inv_A, peak_radius_inv_A, strength,
                                half_agreement, meridional``
``helical_candidates.csv``      ``class, rank, rise_A, twist_deg, csym, pitch_A, score,
                                matched_lines, note``
``ps_class{k}.png``             average | spectrum (lines, top candidate) | profiles
``ps_class{k}_agreement.png``   half-set agreement along each layer line
``index.html``                  all of it on one page (images beside it)
==============================  ============================================================

Half sets (:func:`filament_halves`) never split a filament: overlapping segments of one
filament share signal *and noise*, so a segment-wise split would make noise peaks agree.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from csplugin.core.images import iter_chunks
from csplugin.core.memory import scratch
from csplugin.core.particles import ParticleTable
from csplugin.engines.filament import (
    apply_filament_masks,
    filament_axis_angle,
    filament_axis_offset,
    filament_masks,
    turn_and_centre,
)
from csplugin.engines.helical_index import HelicalCandidate, helix_radius_range, index_helix
from csplugin.engines.layer_lines import LayerLine, detect_layer_lines
from csplugin.engines.power_spectrum import RotatedSums, axis_rotation, crop_to_resolution, to_log
from csplugin.engines.transform import align_images
from csplugin.outputs import helical_report
from csplugin.outputs.spectrum_figures import class_figure
from formats.mrc import StackWriter

__all__ = ["ClassExtras", "ClassIndex", "ClassOutput", "HelicalStacks", "add_aligned",
           "aligned_sum", "class_output", "filament_halves", "helical_outputs",
           "index_and_draw"]

#: Particles per class averaged for the filament mask's axis (read before the pass).
AXIS_PARTICLES = 500
_ALIGN_BATCH = 4  # particles aligned at once for a class average (add_aligned)
#: Particles per class in class_averages.mrcs (and the axis estimate): each costs a bilinear
#: resampling, about a sixth of its spectrum's cost; 1000 segments average the noise well
#: enough to read phases beside the spectrum.
AVERAGE_PARTICLES = 1000
#: Candidates written per class (ranked; the issue's target is the truth in the top 10).
#: Each costs its predicted layer lines (``HelicalCandidate.predicted``), which
#: :func:`index_helix` computes line by line: 20 candidates were 40 % of the indexing time.
TOP_CANDIDATES = 10
#: Layer lines shown and used at most per class (strongest first).
MAX_LINES = 40


@dataclass
class ClassExtras:
    """What the reading pass collects per class beside its spectrum sums."""

    half1: RotatedSums | None = None
    half2: RotatedSums | None = None
    average_sum: np.ndarray | None = None  # sum of the aligned particles, class frame
    average_count: int = 0


@dataclass
class ClassIndex:
    """The helical results of one class."""

    k: int
    axis_angle_deg: float | None
    rotation_deg: float
    average: np.ndarray | None  # turned and centred
    radius_range: tuple[float, float] | None
    radius_source: str
    lines: list[LayerLine] = field(default_factory=list)
    candidates: list[HelicalCandidate] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""


def filament_halves(table: ParticleTable) -> tuple[np.ndarray, str]:
    """Half set (0 or 1) of every particle, never splitting a filament.

    * With filament ids (cryoSPARC ``filament/filament_uid``, RELION ``rlnHelicalTubeID``,
      which RELION numbers per micrograph, so paired with the micrograph when known): whole
      filaments go to the half with fewer particles so far, largest filament first (ties by
      first appearance), so the halves are balanced and no filament is in both.
    * Without filament ids but with micrographs: the same with whole micrographs (no filament
      can be in both halves then either).
    * With neither: within each class, the first half of its particles in input order and the
      second half (segments of a filament are usually consecutive in the input, so at most
      the filament at the cut is shared); stated in ``summary.json``.

    Returns
    -------
    halves : ndarray, shape (n,), int64
    how : str
        Which rule was used, for ``summary.json``.
    """
    p = table.particles
    n = len(p)
    tube = p["helical_tube_id"].to_numpy(np.int64) if "helical_tube_id" in p else np.full(n, -1)
    mic = p["micrograph"] if "micrograph" in p else None
    if n and (tube >= 0).all():
        keys = pd.Series(tube.astype(str)) if mic is None else (
            mic.astype(str).reset_index(drop=True) + "\x00" + pd.Series(tube.astype(str)))
        how = "filament (helical_tube_id" + ("" if mic is None else " per micrograph") + ")"
    elif mic is not None and n and mic.notna().all():
        keys = mic.astype(str).reset_index(drop=True)
        how = "micrograph (no filament ids; whole micrographs per half)"
    else:
        classes = p["class_index"].to_numpy()
        halves = np.zeros(n, np.int64)
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            halves[rows[len(rows) // 2:]] = 1
        return halves, ("input order (no filament or micrograph ids: first and second half of "
                        "each class's particles; a filament at the cut may be in both)")
    codes, _ = pd.factorize(keys)
    sizes = np.bincount(codes)
    order = np.lexsort((np.arange(len(sizes)), -sizes))
    side = np.zeros(len(sizes), np.int64)
    totals = [0, 0]
    for g in order:
        h = 0 if totals[0] <= totals[1] else 1
        side[g] = h
        totals[h] += int(sizes[g])
    return side[codes], how


def average_rows(classes: np.ndarray, limit: int = AVERAGE_PARTICLES) -> np.ndarray:
    """Which particles make each class's average (``class_averages.mrcs``, the axis):
    all of a class with at most ``limit`` particles, else ``limit`` of them evenly spread
    over its input order (every n-th), so that many filaments and micrographs contribute.

    Parameters
    ----------
    classes : ndarray, shape (n,)
        Class number of each particle.

    Returns
    -------
    ndarray, shape (n,), bool
    """
    chosen = np.zeros(len(classes), bool)
    for k in np.unique(classes):
        rows = np.flatnonzero(classes == k)
        if len(rows) <= limit:
            chosen[rows] = True
        else:
            chosen[rows[np.linspace(0, len(rows) - 1, limit).round().astype(np.int64)]] = True
    return chosen


def add_aligned(sums: dict[int, tuple[np.ndarray, int]], k: int, images: np.ndarray,
                poses: tuple[np.ndarray, np.ndarray], rows: np.ndarray,
                lock: threading.Lock | None = None) -> None:
    """Add ``images`` ``(n, N, N)`` aligned (bilinear) to ``sums[k]``, a class average's
    running ``(float64 sum, count)``. ``poses``: the table's
    :meth:`~csplugin.core.particles.ParticleTable.alignments`, indexed by ``rows`` ``(n,)``;
    float64, so the order in which threads add their parts changes the sum by ~1e-16 only;
    with ``lock``, from several threads. Aligned a few at a time: little scratch a thread."""
    angles, shifts = poses
    aligned = np.zeros(images.shape[1:], np.float64)
    for s in range(0, len(rows), _ALIGN_BATCH):
        part = slice(s, s + _ALIGN_BATCH)
        aligned += align_images(images[part], angles[rows[part]], shifts[rows[part]], "linear",
                                out=scratch("aligned", images[part].shape)).sum(
                                    axis=0, dtype=np.float64)
    with lock or contextlib.nullcontext():
        have = sums.get(k)
        sums[k] = (aligned if have is None else have[0] + aligned,
                   len(rows) + (0 if have is None else int(have[1])))


def aligned_sum(table: ParticleTable, stacks: dict[str, Any],
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Sum (float64) and count of the aligned particles of ``table`` (bilinear): an average's
    parts, e.g. for an axis estimate; also a runner task."""
    sums: dict[int, tuple[np.ndarray, int]] = {}
    poses = table.alignments()
    for rows, images in iter_chunks(table, stacks=stacks):
        add_aligned(sums, 0, images, poses, rows)
    return sums[0]


def filament_masker(subset: ParticleTable, stacks: dict[str, Any], group: list[int | None],
                    given: dict[int, float] | None, stored: dict[int, np.ndarray],
                    options: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """With ``options.filament_width``: a function ``(images, rows) -> conditioned images``
    that applies each particle's soft rectangle along its class's axis (width in Å, length
    0.9 N, cosine edges 0.05 N, times the soft circle), normalised as the circular path
    (:func:`csplugin.engines.filament.apply_filament_masks`). The axis and its offset come
    from the given angle or the stored average, else from an average of the first
    ``AXIS_PARTICLES`` particles of the class, read before the pass. None without a width."""
    if options.filament_width is None:
        return None
    from csplugin.engines.power_spectrum import soft_circular_mask
    from csplugin.jobs.runners import task_table, used_stacks

    numbers = subset.class_numbers()
    box, pixel = subset.box(), subset.pixel_size()
    p = subset.particles
    geometry: dict[int | None, tuple[float, float]] = {}
    for k in group:
        rows = np.flatnonzero(numbers == k) if k is not None else np.arange(len(subset))
        if k is not None and k in stored:
            image = stored[k]
        else:
            first = rows[:AXIS_PARTICLES]
            total, count = aligned_sum(task_table(subset, first),
                                       used_stacks(subset, first, stacks))
            image = total / max(count, 1)
        angle = (math.radians(given[k]) if given and k in given
                 else filament_axis_angle(image))
        geometry[k] = (angle, filament_axis_offset(image, angle))
    circle = soft_circular_mask(box)
    width_px = float(options.filament_width) / pixel
    angles_all = p["angle"].to_numpy()
    shifts_all = p[["shift_x", "shift_y"]].to_numpy()

    def apply(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        masks = np.empty(images.shape, np.float32)
        ks = numbers[rows] if group != [None] else np.full(len(rows), None)
        for k in set(ks.tolist()):
            sel = np.flatnonzero(ks == k) if k is not None else np.arange(len(rows))
            angle, offset = geometry[k]
            masks[sel] = filament_masks(box, width_px, angles_all[rows[sel]],
                                        shifts_all[rows[sel]], angle, offset) * circle
        return apply_filament_masks(images, masks, normalize=options.normalize)

    return apply


def _turn_spectrum(spectrum: np.ndarray, rotation: float) -> np.ndarray:
    """A centred spectrum rotated by ``rotation`` (direction φ -> φ + rotation), bilinear."""
    from scipy import ndimage

    m = spectrum.shape[0]
    c = m // 2
    y, x = np.mgrid[0:m, 0:m] - c
    cs, sn = math.cos(rotation), math.sin(rotation)
    src_x, src_y = cs * x + sn * y, -sn * x + cs * y  # R(-rotation) q
    return ndimage.map_coordinates(spectrum, [src_y + c, src_x + c], order=1,
                                   cval=0.0).astype(np.float32)


def vertical(image: np.ndarray, axis: str, axis_angle: float | None) -> np.ndarray | None:
    """An image of the job's frame with the helical axis made vertical (None if unknown)."""
    if axis == "vertical":
        return image
    if axis == "horizontal":
        return np.ascontiguousarray(image.T)
    if axis_angle is None:
        return None
    return _turn_spectrum(image, axis_rotation(axis_angle, "vertical"))


def _prepare(spectrum: np.ndarray, pixel_size: float, crop: float | None
             ) -> tuple[np.ndarray, float]:
    if crop is None:
        return spectrum, pixel_size
    return crop_to_resolution(spectrum, pixel_size, crop)


def index_class(k: int, spectrum: np.ndarray, half1: np.ndarray | None,
                half2: np.ndarray | None, average: np.ndarray | None, header_pixel: float,
                pixel_size: float, axis: str, axis_angle: float | None,
                helix_radius: tuple[float, float] | None, max_csym: int,
                rotation: float) -> ClassIndex:
    """Layer lines and candidates of one class (spectra linear, already cropped)."""
    start = time.perf_counter()
    out = ClassIndex(k, None if axis_angle is None else math.degrees(axis_angle),
                     math.degrees(rotation), average, None, "")
    spec_v = vertical(spectrum, axis, axis_angle)
    if spec_v is None:
        out.message = "no axis angle: not indexed"
        return out
    h1 = vertical(half1, axis, axis_angle) if half1 is not None else None
    h2 = vertical(half2, axis, axis_angle) if half2 is not None else None
    lines = detect_layer_lines(spec_v, header_pixel, half1=h1, half2=h2)
    if len(lines) > MAX_LINES:
        keep = sorted(sorted(lines, key=lambda ln: -ln.strength)[:MAX_LINES],
                      key=lambda ln: ln.height)
        lines = keep
    out.lines = lines
    if helix_radius is not None:
        out.radius_range, out.radius_source = helix_radius, "given (--helix-radius)"
    elif average is not None:
        avg_v = vertical(average, axis, axis_angle)
        try:
            out.radius_range = helix_radius_range(avg_v, pixel_size) if avg_v is not None else None
            out.radius_source = "estimated from the class average's width"
        except ValueError as exc:
            out.message = f"helix radius not estimated ({exc})"
    if out.radius_range is not None and out.radius_range[0] > 0:
        nyquist = 1.0 / (2.0 * header_pixel)
        out.candidates = index_helix(lines, out.radius_range, nyquist=nyquist,
                                     max_csym=max_csym, top=TOP_CANDIDATES,
                                     sampling=1.0 / (spectrum.shape[0] * header_pixel))
    out.seconds = time.perf_counter() - start
    return out


def fold_twist(twist: float) -> float:
    """Twist folded into (-180, 180]."""
    t = math.fmod(twist, 360.0)
    if t > 180.0:
        t -= 360.0
    elif t <= -180.0:
        t += 360.0
    return t


@dataclass
class ClassOutput:
    """One class's part of the helical outputs, made as soon as its spectrum is complete
    (:func:`class_output`) so that its figure can be drawn while later classes are computed."""

    k: int
    spectrum: np.ndarray  # linear, cropped like the outputs (None once written: slim)
    half1: np.ndarray | None
    half2: np.ndarray | None
    average: np.ndarray | None  # turned and centred like the spectrum
    result: ClassIndex
    header_pixel: float
    half_counts: tuple[int, int]
    average_count: int
    index_angle: float | None = None  # axis (rad) the indexing turns the spectra by
    rotation: float = 0.0  # rad, the job's turn of this class

    def slim(self) -> ClassOutput:
        """The class without its images (written already): what the tables and
        ``index.html`` need, a few kB whatever the box."""
        return replace(self, spectrum=None, half1=None, half2=None,  # type: ignore[arg-type]
                       average=None, result=replace(self.result, average=None))


def class_output(k: int, angle: float | None, spectrum: np.ndarray, extra: ClassExtras,
                 pixel_size: float, options: Any) -> ClassOutput:
    """Crop class ``k``'s spectra and turn its average (``angle``: its axis in radians or
    None; ``spectrum`` linear, uncropped); its ``result`` is not indexed yet
    (:func:`index_and_draw`)."""
    crop, axis = options.crop_resolution, options.axis
    spec, header_pixel = _prepare(spectrum, pixel_size, crop)
    h1 = _prepare(extra.half1.spectrum(), pixel_size, crop)[0] if extra.half1 else None
    h2 = _prepare(extra.half2.spectrum(), pixel_size, crop)[0] if extra.half2 else None
    rotation = axis_rotation(angle, axis) if angle is not None else 0.0
    average = None
    angle_for_index = angle
    if extra.average_sum is not None and extra.average_count:
        raw = extra.average_sum / extra.average_count
        a = angle
        if a is None:
            try:
                a = filament_axis_angle(raw)
            except ValueError:
                a = None
        average = (turn_and_centre(raw, a, rotation, filament_axis_offset(raw, a))
                   if a is not None else raw.astype(np.float32))
        if angle is None and a is not None and axis == "class":
            angle_for_index = a
    result = ClassIndex(k, None if angle is None else math.degrees(angle),
                        math.degrees(rotation), average, None, "", message="not indexed")
    counts = (int(extra.half1.n if extra.half1 else 0), int(extra.half2.n if extra.half2 else 0))
    return ClassOutput(int(k), spec, h1, h2, average, result, header_pixel, counts,
                       int(extra.average_count), angle_for_index, rotation)


def index_and_draw(outdir: Path, c: ClassOutput, pixel_size: float, options: Any
                   ) -> tuple[ClassIndex, dict[str, str]]:
    """Index class ``c`` (with ``options.index``) and draw its figure (here): the per-class
    work that a job hands to its figure process, off the path of its maths (numpy, scipy
    and matplotlib only: no numba threads in a forked process). Returns the class's
    result and its figure files for ``index.html``."""
    result = c.result
    if options.index:
        # the turned average is in the job's frame, like the spectrum
        result = index_class(c.k, c.spectrum, c.half1, c.half2, c.average, c.header_pixel,
                             pixel_size, options.axis, c.index_angle, options.helix_radius,
                             options.max_csym, c.rotation)
    if options.half_sets and (c.half1 is None) != (c.half2 is None):
        # a class whose particles all fell in one half (one filament) gets a zero slice
        result.message = "; ".join(x for x in (result.message, "one half set is empty (all "
                                   "particles in one filament): its slice is zero, no "
                                   "agreement") if x)
    figure = class_figure(outdir, result, c.spectrum, c.header_pixel, pixel_size,
                          options.axis, options)
    return result, figure


class HelicalStacks:
    """``ps_classes.mrcs``, with half sets ``ps_classes_half1/2.mrcs`` (a zero slice for a
    class whose particles all fell in one half) and ``class_averages.mrcs`` (left out if a
    class has no average), written a class at a time as each is complete (:meth:`add`;
    slice ``i`` = ``i``-th class added, ``stack_order``), so the job's memory does not grow
    with the number of classes. A context manager: the stacks appear when it exits without
    error and every class was added."""

    def __init__(self, outdir: Path, n_classes: int, box: int, pixel_size: float,
                 options: Any) -> None:
        self.outdir, self.n, self.box, self.pixel_size = outdir, n_classes, box, pixel_size
        self.options = options
        self._writers: dict[str, StackWriter] = {}
        self._added = 0
        self._all_averages = True

    def __enter__(self) -> HelicalStacks:
        return self

    def _writer(self, name: str, size: int, pixel: float) -> StackWriter:
        if name not in self._writers:
            writer = StackWriter(self.outdir / name, self.n, size, pixel)
            writer.__enter__()
            self._writers[name] = writer
        return self._writers[name]

    def add(self, c: ClassOutput) -> None:
        """Write the slices of class ``c`` (the next index)."""
        i, m = self._added, c.spectrum.shape[0]

        def plane(x: np.ndarray | None) -> np.ndarray:
            if x is None:
                return np.zeros((1, m, m), np.float32)
            return np.asarray(to_log(x) if self.options.log else x, np.float32)[None]

        self._writer("ps_classes.mrcs", m, c.header_pixel).write(plane(c.spectrum), i)
        if self.options.half_sets:
            self._writer("ps_classes_half1.mrcs", m, c.header_pixel).write(plane(c.half1), i)
            self._writer("ps_classes_half2.mrcs", m, c.header_pixel).write(plane(c.half2), i)
        self._all_averages &= c.average is not None
        average = np.zeros((self.box, self.box)) if c.average is None else c.average
        self._writer("class_averages.mrcs", self.box, self.pixel_size).write(
            np.asarray(average, np.float32)[None], i)
        self._added += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: Any) -> None:
        short = None
        if kind is None and self._added != self.n:
            short = RuntimeError(f"helical stacks: {self._added} of {self.n} classes added")
            kind, error = RuntimeError, short
        for writer in self._writers.values():  # on an error each stack is dropped whole
            writer.__exit__(kind, error, trace)
        if short is not None:
            raise short
        if kind is None and not self._all_averages:
            (self.outdir / "class_averages.mrcs").unlink(missing_ok=True)


def helical_outputs(outdir: Path, classes: list[ClassOutput], pixel_size: float,
                    options: Any, halves_how: str, summary: dict[str, Any],
                    figures: dict[int, dict[str, str]]) -> dict[str, Any]:
    """Write the helical tables and ``index.html`` of ``classes`` (:func:`class_output`, in
    stack order; their stacks are written by :class:`HelicalStacks`); ``figures``: each
    class's figure files (drawn already, see
    :func:`csplugin.outputs.spectrum_figures.class_figure`), for ``index.html``.

    ``options`` is the job's :class:`csplugin.jobs.power_spectrum.SpectrumOptions`. Returns
    what goes into ``summary.json`` (``stack_order``, half-set rule, averages, indexing
    results and times).
    """
    t0 = time.perf_counter()
    results = [c.result for c in classes]
    helical_report.layer_lines_csv(outdir / "layer_lines.csv", results)
    helical_report.candidates_csv(outdir / "helical_candidates.csv", results)
    index_seconds = sum(r.seconds for r in results if options.index)
    extra_summary = {
        "stack_order": [c.k for c in classes],
        "half_sets": {"split_by": halves_how,
                      "particles": [c.half_counts[0] for c in classes],
                      "particles_half2": [c.half_counts[1] for c in classes]},
        "class_averages_particles": [c.average_count for c in classes],
        "indexing": {str(r.k): {
            "axis_angle_deg": r.axis_angle_deg, "rotation_deg": r.rotation_deg,
            "helix_radius_A": list(r.radius_range) if r.radius_range else None,
            "helix_radius_source": r.radius_source, "layer_lines": len(r.lines),
            "meridional_heights_inv_A": [ln.height for ln in r.lines if ln.meridional],
            "top_candidates": [{"rise_A": c.rise, "twist_deg": fold_twist(c.twist),
                                "csym": c.csym, "pitch_A": c.pitch, "score": c.score,
                                "note": c.note} for c in r.candidates[:3]],
            "message": r.message} for r in results},
        "seconds": {"indexing": index_seconds, "helical_outputs": time.perf_counter() - t0},
    }
    helical_report.index_html(outdir / "index.html", results, figures, {**summary,
                                                                        **extra_summary})
    return extra_summary
