"""Synthetic helical segments of known symmetry (for the helical-indexing tests and the demo).

Model
-----
A helix of Gaussian subunits: subunit ``j`` of start ``s`` (``s = 0 .. Cn-1``) of filament
``f`` sits at radius ``r``, azimuth ``φ = j·Δφ + s·360°/Cn + φ_f`` and axial position
``z = j·Δz`` (Å), where ``φ_f`` is the filament's own random azimuth. A segment is cut at its
position ``t`` along the filament (consecutive segments step by ``step`` Å, so they overlap
and each shows the helix at the axial phase of its position), i.e. it holds the subunits at
``z - t`` from the box centre. The beam is along the 3D ``y`` axis, so a subunit projects to
``(u, v) = (r cos φ, z - t)`` (Å; ``v`` along the helix axis), and a 3D isotropic Gaussian
projects to a 2D isotropic Gaussian of the same σ (peak height 1 here).

Frames (csplugin convention, :mod:`csplugin.core.conventions`): in the class frame the helix
axis points at ``axis_angle`` (degrees from +x towards +y; 90 = vertical, along rows), so a
subunit is at ``q = (v·a + u·b) / pixel`` with ``a = (cos α, sin α)``, ``b = (-sin α, cos α)``.
The raw particle with internal angle θ and shift s is ``P(p) = A(R(θ)(p + s))``: each
subunit moves to ``R(-θ) q - s`` (isotropic blobs keep their shape). Images are rendered
exactly as separable Gaussians (one ``(N, J) @ (J, N)`` product per image).

:func:`make_helical_segments` returns the images and the truth per segment;
:func:`make_helical_job` writes them as a cryoSPARC 2D job (+ passthrough) and a RELION 3.1
``.star`` with ``filament/filament_uid`` / ``rlnHelicalTubeID``, one class per helix.
:func:`preset_helices` is the test set: C1 helices with pitch shorter than the box, a C3 helix
and one whose rise reflection lies past Nyquist.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from csplugin.core.fields import Cs, Relion
from csplugin.synthetic.jobs import write_particle_metadata
from formats.mrc import write_stack

__all__ = [
    "HelicalJob",
    "HelicalSegments",
    "HelixSpec",
    "class_average_truth",
    "class_frame_positions",
    "make_helical_job",
    "make_helical_segments",
    "preset_helices",
]


@dataclass(frozen=True)
class HelixSpec:
    """A helical lattice of Gaussian subunits.

    Attributes
    ----------
    name
        Label (used in the job's truth file).
    rise
        Axial rise per subunit Δz, Å (> 0).
    twist
        Rotation per subunit Δφ, degrees (sign = hand).
    csym
        Cyclic symmetry Cn about the helix axis (``Cn`` subunits at each height).
    radius
        Radius of the subunit centres, Å.
    sigma
        Subunit size: standard deviation of the Gaussian blob, Å.
    """

    name: str
    rise: float
    twist: float
    csym: int = 1
    radius: float = 50.0
    sigma: float = 3.0

    @property
    def pitch(self) -> float:
        """Pitch of one start, ``360·Δz/|Δφ|`` Å (inf for zero twist)."""
        return math.inf if self.twist == 0 else 360.0 * self.rise / abs(self.twist)


def preset_helices() -> list[HelixSpec]:
    """The reference set, meant for box 128 px at 2.5 Å/px (320 Å box, Nyquist 1/5 Å⁻¹).

    * ``c1_a``: rise 10 Å, twist 33.5° (pitch 107.5 Å), r 50 Å;
    * ``c1_b``: rise 6.1 Å, twist -52.3° (pitch 42.0 Å), r 40 Å;
    * ``c1_c``: rise 14.3 Å, twist 65.7° (pitch 78.4 Å), r 60 Å;
    * ``c3``: rise 8 Å, twist -28.7°, C3 (pitch 100.3 Å), r 60 Å;
    * ``past_nyquist``: rise 4.3 Å (1/rise = 0.233 Å⁻¹ > Nyquist 0.2), twist 21.3°
      (pitch 72.7 Å), r 35 Å.

    Twists are non-integral in units per turn (an integral repeat makes lines of different
    ``(n, m)`` coincide).
    """
    return [
        HelixSpec("c1_a", 10.0, 33.5, 1, 50.0, 3.0),
        HelixSpec("c1_b", 6.1, -52.3, 1, 40.0, 2.2),
        HelixSpec("c1_c", 14.3, 65.7, 1, 60.0, 3.5),
        HelixSpec("c3", 8.0, -28.7, 3, 60.0, 3.0),
        HelixSpec("past_nyquist", 4.3, 21.3, 1, 35.0, 2.0),
    ]


@dataclass(frozen=True)
class HelicalSegments:
    """Rendered segments and their truth.

    Attributes
    ----------
    images
        ``(n, N, N)`` float32 raw particles (noise included).
    angles
        ``(n,)`` stored internal angles θ, radians (the rendering used ``true_angles``).
    true_angles
        ``(n,)`` exact θ used for rendering, radians.
    shifts
        ``(n, 2)`` internal shifts s ``(x, y)``, px.
    classes
        ``(n,)`` 0-based index of the helix in ``helices``.
    filament_ids
        ``(n,)`` filament number (unique over all helices; split half-sets by filament).
    axial_positions
        ``(n,)`` position ``t`` of each segment along its filament, Å.
    azimuths
        ``(n,)`` azimuth ``φ_f`` of each segment's filament, degrees.
    axis_angles
        ``(n_helices,)`` helix axis direction in the class frame, degrees from +x to +y.
    helices
        The helices, index = class.
    pixel_size
        Å/px.
    box
        ``N``.
    """

    images: np.ndarray
    angles: np.ndarray
    true_angles: np.ndarray
    shifts: np.ndarray
    classes: np.ndarray
    filament_ids: np.ndarray
    axial_positions: np.ndarray
    azimuths: np.ndarray
    axis_angles: np.ndarray
    helices: tuple[HelixSpec, ...]
    pixel_size: float
    box: int


def class_frame_positions(helix: HelixSpec, box: int, pixel_size: float, azimuth: float,
                          axial_position: float, axis_angle: float = 90.0) -> np.ndarray:
    """Subunit centres of one segment in the class frame.

    Parameters
    ----------
    helix
        The helix.
    box, pixel_size
        Box ``N`` (px) and pixel size (Å/px).
    azimuth
        The filament's azimuth ``φ_f``, degrees.
    axial_position
        The segment's position ``t`` along the filament, Å.
    axis_angle
        Axis direction in the class frame, degrees from +x towards +y.

    Returns
    -------
    np.ndarray
        ``(J, 2)`` centres ``(x, y)`` in px from the box centre: every subunit within
        ``0.75 N`` px + 4σ of the centre along the axis.
    """
    reach = 0.75 * box * pixel_size + 4 * helix.sigma
    j = np.arange(math.floor((axial_position - reach) / helix.rise),
                  math.ceil((axial_position + reach) / helix.rise) + 1)
    starts = np.arange(helix.csym)
    phi = np.deg2rad(j[:, None] * helix.twist + starts[None, :] * 360.0 / helix.csym + azimuth)
    u = (helix.radius * np.cos(phi)).ravel()
    v = np.repeat(j * helix.rise - axial_position, helix.csym)
    alpha = np.deg2rad(axis_angle)
    a, b = np.array([np.cos(alpha), np.sin(alpha)]), np.array([-np.sin(alpha), np.cos(alpha)])
    return (v[:, None] * a + u[:, None] * b) / pixel_size


def _render_blobs(centres: np.ndarray, sigma_px: float, box: int) -> np.ndarray:
    """Sum of isotropic unit-peak Gaussians at ``(J, 2)`` centres -> ``(N, N)`` float64."""
    grid = np.arange(box) - box // 2
    gx = np.exp(-0.5 * ((grid[None, :] - centres[:, 0, None]) / sigma_px) ** 2)  # (J, N)
    gy = np.exp(-0.5 * ((grid[None, :] - centres[:, 1, None]) / sigma_px) ** 2)
    return gy.T @ gx  # rows y, columns x


def make_helical_segments(helices: Sequence[HelixSpec] | None = None, *, box: int = 128,
                          pixel_size: float = 2.5, filaments_per_helix: int = 10,
                          segments_per_filament: int = 20, step_rises: float = 3.0,
                          axis_angle: float | Sequence[float] = 90.0, noise_sigma: float = 1.0,
                          max_shift: float = 3.0, psi_error_deg: float = 0.0,
                          seed: int = 0) -> HelicalSegments:
    """Render segments of straight filaments of known helical symmetry.

    Each filament gets a random azimuth ``φ_f`` (rotation about its axis), a random start
    position along the axis, and a random in-plane angle θ_f (segments jitter by 1° s.d.
    about it, as picked filaments do); each segment gets a uniform random shift.

    Parameters
    ----------
    helices
        The helices (class ``k`` = ``helices[k]``); default :func:`preset_helices`.
    box, pixel_size
        Box ``N`` (px) and pixel size (Å/px).
    filaments_per_helix, segments_per_filament
        Filaments per helix and segments cut from each.
    step_rises
        Distance between consecutive segments of a filament, in rises (segments overlap when
        ``step_rises · rise < N · pixel_size``).
    axis_angle
        Helix axis direction in the class frame, degrees from +x to +y (90: vertical), one
        value or one per helix.
    noise_sigma
        Standard deviation of the white Gaussian noise (a subunit's projected peak is 1).
    max_shift
        Shifts uniform in ``[-max_shift, max_shift]`` px on each axis.
    psi_error_deg
        Standard deviation (degrees) of the error of the stored angles ``angles`` about the
        exact ``true_angles`` (emulates 2D alignment errors); 0: exact.
    seed
        Random seed.

    Returns
    -------
    HelicalSegments
        ``n = len(helices) · filaments_per_helix · segments_per_filament`` segments, ordered
        by helix, filament, position.
    """
    helices = tuple(preset_helices() if helices is None else helices)
    rng = np.random.default_rng(seed)
    axes = np.broadcast_to(np.asarray(axis_angle, np.float64), (len(helices),)).copy()
    per_helix = filaments_per_helix * segments_per_filament
    n = len(helices) * per_helix
    images = np.empty((n, box, box), np.float32)
    classes = np.repeat(np.arange(len(helices)), per_helix)
    filament_ids = np.repeat(np.arange(len(helices) * filaments_per_helix), segments_per_filament)
    azimuths = np.empty(n)
    positions = np.empty(n)
    # float32 values, so the .cs (float32) and the .star describe exactly the same poses
    true_angles = np.empty(n)
    shifts = rng.uniform(-max_shift, max_shift, (n, 2)).astype(np.float32).astype(np.float64)
    row = 0
    for k, helix in enumerate(helices):
        for _ in range(filaments_per_helix):
            rows = slice(row, row + segments_per_filament)
            azimuths[rows] = rng.uniform(0.0, 360.0)
            positions[rows] = (rng.uniform(0.0, 1000.0)
                               + np.arange(segments_per_filament) * step_rises * helix.rise)
            true_angles[rows] = rng.uniform(0.0, 2 * np.pi) + np.deg2rad(
                rng.normal(0.0, 1.0, segments_per_filament))
            row += segments_per_filament
        for i in range(k * per_helix, (k + 1) * per_helix):
            q = class_frame_positions(helix, box, pixel_size, azimuths[i], positions[i], axes[k])
            c, s = math.cos(true_angles[i]), math.sin(true_angles[i])
            raw = q @ np.array([[c, -s], [s, c]]) - shifts[i]  # rows: R(-θ) q - s
            images[i] = _render_blobs(raw, helix.sigma / pixel_size, box)
    true_angles = np.mod(true_angles, 2 * np.pi).astype(np.float32).astype(np.float64)
    angles = true_angles + np.deg2rad(rng.normal(0.0, psi_error_deg, n)) if psi_error_deg else (
        true_angles.copy())
    angles = np.mod(angles, 2 * np.pi).astype(np.float32).astype(np.float64)
    if noise_sigma:
        images += rng.normal(0.0, noise_sigma, images.shape).astype(np.float32)
    return HelicalSegments(images, angles, true_angles, shifts, classes, filament_ids, positions,
                           azimuths, axes, helices, pixel_size, box)


def class_average_truth(segments: HelicalSegments, max_per_class: int = 40) -> np.ndarray:
    """Noise-free class averages: the mean over (up to ``max_per_class`` of) each class's
    segments rendered in the class frame.

    Returns
    -------
    np.ndarray
        ``(n_helices, N, N)`` float32.
    """
    out = np.zeros((len(segments.helices), segments.box, segments.box))
    counts = np.zeros(len(segments.helices), np.int64)
    for i in range(len(segments.classes)):
        k = segments.classes[i]
        if counts[k] >= max_per_class:
            continue
        helix = segments.helices[k]
        q = class_frame_positions(helix, segments.box, segments.pixel_size, segments.azimuths[i],
                                  segments.axial_positions[i], segments.axis_angles[k])
        out[k] += _render_blobs(q, helix.sigma / segments.pixel_size, segments.box)
        counts[k] += 1
    return (out / np.maximum(counts, 1)[:, None, None]).astype(np.float32)


@dataclass(frozen=True)
class HelicalJob:
    """Paths and truth of a job written by :func:`make_helical_job`."""

    project: Path
    particles_cs: Path
    passthrough_cs: Path
    particles_star: Path
    class_averages: Path
    truth_json: Path
    segments: HelicalSegments


def make_helical_job(outdir: str | Path, segments: HelicalSegments | None = None, *,
                     n_stacks: int = 2, seed: int = 0, **segment_options: object) -> HelicalJob:
    """Write synthetic helical segments as a cryoSPARC 2D job and its RELION equivalent.

    Same layout as :func:`csplugin.synthetic.jobs.make_job` (``project/J2/extract`` stacks,
    ``project/J3/J3_020_particles.cs`` + passthrough, ``project/particles.star``), one class
    per helix, plus:

    * ``filament/filament_uid`` (``.cs``) and ``rlnHelicalTubeID`` (``.star``, 1-based), so
      half-sets can be split by filament;
    * ``J3/J3_020_class_averages.mrc``: noise-free class averages (axis at ``axis_angle``);
    * ``helices.json``: each class's helix (rise, twist, Cn, radius, sigma, pitch, axis
      angle), pixel size and box.

    Parameters
    ----------
    outdir
        Output directory (``outdir/project`` is created).
    segments
        Already rendered segments; default :func:`make_helical_segments` with
        ``segment_options`` and ``seed``.
    n_stacks
        Number of particle stacks (filaments are not split across stacks).
    """
    if segments is None:
        segments = make_helical_segments(seed=seed, **segment_options)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed + 1)
    project = Path(outdir) / "project"
    (project / "J2" / "extract").mkdir(parents=True, exist_ok=True)
    (project / "J3").mkdir(parents=True, exist_ok=True)
    n = len(segments.classes)
    n_filaments = int(segments.filament_ids.max()) + 1
    stack_of = np.asarray(segments.filament_ids * n_stacks // n_filaments, np.int64)
    paths = np.array([f"J2/extract/mic{k:03d}_particles.mrcs" for k in stack_of])
    index = np.zeros(n, np.int64)
    for k in np.unique(stack_of):
        rows = np.flatnonzero(stack_of == k)
        index[rows] = np.arange(len(rows))
        write_stack(project / paths[rows[0]], segments.images[rows], segments.pixel_size)
    averages = project / "J3" / "J3_020_class_averages.mrc"
    write_stack(averages, class_average_truth(segments), segments.pixel_size)
    tube = segments.filament_ids.astype(np.int64)
    particles_cs, passthrough_cs, particles_star = write_particle_metadata(
        project, rng, paths, index, stack_of, segments.angles, segments.shifts,
        segments.classes, segments.pixel_size, segments.box,
        extra_cs={Cs.FIL_UID: ("<u4", tube)},
        extra_star={Relion.HELICAL_TUBE_ID: tube + 1})
    truth = {
        "pixel_size_A": segments.pixel_size, "box": segments.box,
        "classes": {str(k): {**asdict(h), "pitch": h.pitch,
                             "axis_angle_deg": float(segments.axis_angles[k])}
                    for k, h in enumerate(segments.helices)},
    }
    truth_json = project / "helices.json"
    truth_json.write_text(json.dumps(truth, indent=2))
    return HelicalJob(project, particles_cs, passthrough_cs, particles_star, averages,
                      truth_json, segments)
