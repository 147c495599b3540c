r"""The one place where cryoSPARC, RELION and csplugin conventions are converted.

Internal convention
-------------------
Pixel coordinates are relative to the box centre: ``x = col - N//2``, ``y = row - N//2`` for
a numpy image ``P[row, col]`` (x = MRC fast axis). ``R(a) = [[cos a, -sin a], [sin a, cos a]]``
acts on column vectors ``(x, y)``. A particle carries an in-plane angle ``angle`` = θ (radians)
and a shift ``(shift_x, shift_y)`` = s (pixels of the particle image). The particle in the
class frame (the *aligned* image) is

.. math::

    A(q) = P\bigl(R(-θ)\,q - s\bigr),

i.e. the content is first shifted by +s, then rotated by +θ about ``(N//2, N//2)``.
Inverse: ``P(p) = A(R(θ)(p + s))``.

cryoSPARC (``alignments2D``)
    θ = ``alignments2D/pose`` (radians), s = ``alignments2D/shift`` ``[x, y]`` ×
    ``alignments2D/psize_A`` / ``blob/psize_A`` (the shift is stored in pixels of
    ``alignments2D/psize_A``). ``blob/idx`` and ``alignments2D/class`` are 0-based.
    Evidence: Structura's shift-2d-classes notebook (adding ``R(-θ) d`` to every shift moves
    the classes by +d and keeps them sharp).
RELION (``relion_stack_create --apply_transformation``, ``relion_refine`` 2D)
    θ = radians(``rlnAnglePsi``), s = (``rlnOriginX``, ``rlnOriginY``) pixels, or
    ``rlnOriginXAngst / rlnImagePixelSize`` (3.1+). ``N@stack`` and ``rlnClassNumber`` are
    1-based.
cryoSPARC -> RELION
    psi = +degrees(pose), origin = +shift (no sign flips, no axis swap), class + 1, idx + 1.

Internally, image indices and class indices are 0-based (``class_index = -1``: unclassified).

Mirrored particles (a reflection found by a classifier, e.g. a neighbour network) are
mirrored about the line ``y = 0`` *before* the rotation and shift:
``A(q) = P_M(R(-θ) q - s)`` with ``P_M(x, y) = P(x, -y)`` (:func:`mirror_y`); the CTF of
``P_M`` has astigmatism angle ``-φ``.

Other field mappings kept here (each with its unit change):

=============================  ===============================  =======================
cryoSPARC                      RELION                           internal column
=============================  ===============================  =======================
``ctf/df1_A``, ``ctf/df2_A``   ``rlnDefocusU``, ``rlnDefocusV``  ``defocus_u/v`` (Å)
``ctf/df_angle_rad``           ``rlnDefocusAngle`` (deg)         ``defocus_angle`` (deg)
``ctf/accel_kv``               ``rlnVoltage``                    ``voltage`` (kV)
``ctf/cs_mm``                  ``rlnSphericalAberration``        ``cs`` (mm)
``ctf/amp_contrast``           ``rlnAmplitudeContrast``          ``amplitude_contrast``
``ctf/phase_shift_rad``        ``rlnPhaseShift`` (deg)           ``phase_shift`` (deg)
``ctf/bfactor``                ``rlnCtfBfactor``                 ``bfactor`` (Å²)
``ctf/scale``                  ``rlnCtfScalefactor``             ``ctf_scale``
``ctf/exp_group_id``           optics group (name               ``optics_group``
                               ``opticsGroup<id>``)
``alignments2D/class_posterior`` ``rlnMaxValueProbDistribution``  ``class_posterior``
``filament/filament_uid``      ``rlnHelicalTubeID``              ``helical_tube_id``
``filament/filament_pose``     ``rlnAnglePsiPrior`` =            ``psi_prior`` (deg)
                               deg(π/2 − filament_pose) (pyem)
``location/micrograph_path``   ``rlnMicrographName``             ``micrograph``
``location/center_{x,y}_frac`` ``rlnCoordinateX/Y`` (px)         ``coordinate_x/y`` (px)
 × ``micrograph_shape[1,0]``
=============================  ===============================  =======================
"""

from __future__ import annotations

import numpy as np

#: 1-based numbering in RELION (N@stack, rlnClassNumber, rlnOpticsGroup); 0-based in cryoSPARC.
RELION_BASE = 1
CRYOSPARC_BASE = 0


def from_cryosparc_pose(pose: np.ndarray, shift: np.ndarray, psize_alignment: np.ndarray,
                        psize_blob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cryoSPARC 2D alignment -> internal (angle, shift).

    Parameters
    ----------
    pose
        ``(n,)`` ``alignments2D/pose``, radians.
    shift
        ``(n, 2)`` ``alignments2D/shift`` ``[x, y]`` in pixels of ``psize_alignment``.
    psize_alignment, psize_blob
        ``(n,)`` ``alignments2D/psize_A`` and ``blob/psize_A`` (Å/px).

    Returns
    -------
    (angle, shift)
        ``(n,)`` radians and ``(n, 2)`` pixels of the particle image, float64.
    """
    scale = np.asarray(psize_alignment, np.float64) / np.asarray(psize_blob, np.float64)
    return np.asarray(pose, np.float64), np.asarray(shift, np.float64) * scale[:, None]


def to_cryosparc_pose(angle: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Internal (angle ``(n,)`` rad, shift ``(n, 2)`` px) -> (``pose``, ``shift``) float32.

    The shift is written in particle pixels, so ``alignments2D/psize_A`` must be set to
    ``blob/psize_A``.
    """
    return np.asarray(angle, np.float32), np.asarray(shift, np.float32)


def from_relion_pose(psi_deg: np.ndarray, origin_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RELION (``rlnAnglePsi`` ``(n,)`` deg, origin ``(n, 2)`` px) -> internal (rad, px)."""
    return np.deg2rad(np.asarray(psi_deg, np.float64)), np.asarray(origin_px, np.float64)


def to_relion_pose(angle: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Internal (rad ``(n,)``, px ``(n, 2)``) -> (``rlnAnglePsi`` deg, origin px)."""
    return np.rad2deg(np.asarray(angle, np.float64)), np.asarray(shift, np.float64)


def origin_angstrom_to_px(origin_A: np.ndarray, pixel_size: np.ndarray) -> np.ndarray:
    """``rlnOriginX/YAngst`` ``(n, 2)`` Å -> pixels, dividing by ``(n,)`` Å/px."""
    return np.asarray(origin_A, np.float64) / np.asarray(pixel_size, np.float64)[:, None]


def origin_px_to_angstrom(origin_px: np.ndarray, pixel_size: np.ndarray) -> np.ndarray:
    """Origins ``(n, 2)`` px -> ``rlnOriginX/YAngst`` Å, multiplying by ``(n,)`` Å/px."""
    return np.asarray(origin_px, np.float64) * np.asarray(pixel_size, np.float64)[:, None]


def relion30_pixel_size(detector_pixel_size_um: np.ndarray, magnification: np.ndarray
                        ) -> np.ndarray:
    """RELION <= 3.0 pixel size in Å: ``10000 * rlnDetectorPixelSize / rlnMagnification``."""
    return 1e4 * np.asarray(detector_pixel_size_um, np.float64) / np.asarray(magnification,
                                                                              np.float64)


def from_base(numbers: np.ndarray, base: int) -> np.ndarray:
    """Numbers counted from ``base`` (0 cryoSPARC, 1 RELION) -> 0-based int64."""
    return np.asarray(numbers, np.int64) - base


def to_base(indices: np.ndarray, base: int) -> np.ndarray:
    """0-based indices -> numbers counted from ``base`` (0 cryoSPARC, 1 RELION)."""
    return np.asarray(indices, np.int64) + base


def filament_pose_to_psi_prior(filament_pose: np.ndarray) -> np.ndarray:
    """``filament/filament_pose`` (rad) -> ``rlnAnglePsiPrior`` (deg): deg(π/2 − pose).

    The mapping used by pyem's csparc2star (the widely used cryoSPARC -> RELION route for
    helical data). cryoSPARC's definition of ``filament_pose`` is not documented publicly.
    """
    return np.rad2deg(np.pi / 2 - np.asarray(filament_pose, np.float64))


def psi_prior_to_filament_pose(psi_prior_deg: np.ndarray) -> np.ndarray:
    """Inverse of :func:`filament_pose_to_psi_prior` (deg -> rad)."""
    return np.pi / 2 - np.deg2rad(np.asarray(psi_prior_deg, np.float64))


def rotate_shift_into_class_frame(angle: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The shift increment that moves a particle's aligned image by ``d``: ``R(-θ) d``.

    Adding this to every particle's shift moves the class average by +d (pixels) and
    keeps it sharp (the invariant of Structura's shift-2d-classes notebook).

    Parameters
    ----------
    angle
        ``(n,)`` internal angles θ, radians.
    d
        ``(2,)`` displacement ``(dx, dy)`` in pixels, in the class frame.

    Returns
    -------
    np.ndarray
        ``(n, 2)`` increments ``R(-θ_i) d``.
    """
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * d[0] + s * d[1], -s * d[0] + c * d[1]], axis=1)


def residual_psi_prior(psi_prior_deg: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """A helical psi prior ``(n,)`` deg after the particle is aligned by ``angle`` ``(n,)`` rad.

    Aligning rotates the image by +θ, so a prior that was ``psi_prior`` for the raw particle
    becomes ``psi_prior - degrees(θ)`` for the aligned one (NaN stays NaN).
    """
    return np.asarray(psi_prior_deg, np.float64) - np.rad2deg(np.asarray(angle, np.float64))


def mirror_y(images: np.ndarray) -> np.ndarray:
    """Mirror images ``(..., N, N)`` about the line ``y = 0`` (row ``N//2``): ``P_M(x, y) = P(x, -y)``.

    Row ``N//2 + y`` takes row ``N//2 - y``; for even ``N`` row 0 (``y = -N/2``, whose mirror
    lies outside the box) becomes 0, like the zero fill of :func:`csplugin.engines.transform.align_images`.
    Returns a new array of the same dtype.
    """
    images = np.asarray(images)
    n = images.shape[-2]
    out = np.zeros_like(images)
    if n % 2:
        out[...] = images[..., ::-1, :]
    else:
        out[..., 1:, :] = images[..., :0:-1, :]
    return out
