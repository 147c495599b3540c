"""The reading half of the native codec: what :mod:`csplugin.core.particles` calls so that
:mod:`csplugin.core.native` can write back what it read.

* :func:`check_alignments` refuses partial alignments (a pose without its shift, ...).
* :func:`native_columns` adds normalised columns for 3D alignments (``alignments3D`` or
  ``rlnAngleRot/Tilt/Psi``), csplugin's ``rlnCsPluginUid`` and
  ``csplugin/relion_class_number``.

The formulas are in :mod:`csplugin.core.conventions`; field names in
:mod:`csplugin.core.fields`. This module imports neither particles nor native (no cycles).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from csplugin.core.conventions import (
    CRYOSPARC_BASE,
    RELION_BASE,
    from_base,
    origin_angstrom_to_px,
    rotvec_to_relion_euler,
    split_to_random_subset,
)
from csplugin.core.fields import Cs, Relion
from formats import InputError

#: Pairs of fields that only mean something together: (field, its partner).
_PAIRED: tuple[tuple[str, str], ...] = (
    (Cs.A2D_POSE, Cs.A2D_SHIFT), (Cs.A2D_SHIFT, Cs.A2D_POSE),
    (Cs.A3D_POSE, Cs.A3D_SHIFT), (Cs.A3D_SHIFT, Cs.A3D_POSE),
    (Relion.ORIGIN_X, Relion.ORIGIN_Y), (Relion.ORIGIN_Y, Relion.ORIGIN_X),
    (Relion.ORIGIN_X_ANGST, Relion.ORIGIN_Y_ANGST), (Relion.ORIGIN_Y_ANGST, Relion.ORIGIN_X_ANGST),
    (Relion.ANGLE_ROT, Relion.ANGLE_TILT), (Relion.ANGLE_TILT, Relion.ANGLE_ROT),
)


def check_alignments(names: object, path: object) -> None:
    """Refuse partial alignments: a pose without its shift, a shift without its pose, one
    origin without the other, rot without tilt.

    Parameters
    ----------
    names
        The ``.cs`` field names or ``.star`` particle labels.
    path
        The file, for the message.

    Raises
    ------
    InputError
        Naming the missing field.
    """
    present = set(names)
    for field, partner in _PAIRED:
        if field in present and partner not in present:
            raise InputError(path, f"has '{field}' but no '{partner}', so its alignment is "
                             "incomplete", f"add '{partner}' (or remove '{field}')")


def has_relion_3d_pose(particles: pd.DataFrame) -> bool:
    """Whether a STAR particle table stores 3D poses: rlnAngleRot and rlnAngleTilt present
    and not all zero (2D files sometimes carry them as zero columns)."""
    if not {Relion.ANGLE_ROT, Relion.ANGLE_TILT} <= set(particles):
        return False
    angles = particles[[Relion.ANGLE_ROT, Relion.ANGLE_TILT]].to_numpy(np.float64)
    return bool(len(angles)) and bool(np.any(angles != 0))


def alignments3d_columns(native: np.ndarray | pd.DataFrame, p: pd.DataFrame
                         ) -> dict[str, np.ndarray]:
    """Normalised 3D-alignment columns of a ``.cs`` structured array or ``.star`` particle
    table; ``{}`` when the input stores no 3D pose.

    Columns: ``euler_rot``, ``euler_tilt``, ``euler_psi`` (RELION ZYZ, degrees),
    ``shift3d_x``, ``shift3d_y`` (pixels of the particle image, RELION origin sign),
    ``class3d_index`` (0-based, -1 where absent) and ``random_subset`` (1/2, 0 where absent).
    ``p`` is the normalised table built so far (its ``pixel_size`` converts Å origins).
    """
    n = len(p)
    pixel_size = p["pixel_size"].to_numpy(np.float64)
    if isinstance(native, np.ndarray):
        names = set(native.dtype.names or ())
        if Cs.A3D_POSE not in names:
            return {}
        euler = rotvec_to_relion_euler(native[Cs.A3D_POSE])
        psize = native[Cs.A3D_PSIZE].astype(np.float64) if Cs.A3D_PSIZE in names \
            else pixel_size
        scale = psize / pixel_size
        shift = native[Cs.A3D_SHIFT].astype(np.float64).reshape(-1, 2) * scale[:, None]
        klass = native[Cs.A3D_CLASS].astype(np.int64) - CRYOSPARC_BASE if Cs.A3D_CLASS in names \
            else np.full(n, -1)
        subset = split_to_random_subset(native[Cs.A3D_SPLIT]) if Cs.A3D_SPLIT in names \
            else np.zeros(n, np.int64)
    else:
        if not has_relion_3d_pose(native):
            return {}
        euler = native[[Relion.ANGLE_ROT, Relion.ANGLE_TILT]].to_numpy(np.float64)
        psi = native[Relion.ANGLE_PSI].to_numpy(np.float64) if Relion.ANGLE_PSI in native \
            else np.zeros(n)
        euler = np.column_stack([euler, psi])
        if {Relion.ORIGIN_X_ANGST, Relion.ORIGIN_Y_ANGST} <= set(native):
            shift = origin_angstrom_to_px(native[[Relion.ORIGIN_X_ANGST, Relion.ORIGIN_Y_ANGST]],
                                          pixel_size)
        elif {Relion.ORIGIN_X, Relion.ORIGIN_Y} <= set(native):
            shift = native[[Relion.ORIGIN_X, Relion.ORIGIN_Y]].to_numpy(np.float64)
        else:
            shift = np.zeros((n, 2))
        klass = native[Relion.CLASS_NUMBER].to_numpy(np.int64) - RELION_BASE \
            if Relion.CLASS_NUMBER in native else np.full(n, -1)
        subset = native[Relion.RANDOM_SUBSET].to_numpy(np.int64) \
            if Relion.RANDOM_SUBSET in native else np.zeros(n, np.int64)
    return {"euler_rot": euler[:, 0], "euler_tilt": euler[:, 1], "euler_psi": euler[:, 2],
            "shift3d_x": shift[:, 0], "shift3d_y": shift[:, 1], "class3d_index": klass,
            "random_subset": subset}


def native_columns(native: np.ndarray | pd.DataFrame, p: pd.DataFrame) -> dict[str, np.ndarray]:
    """The reader's hook: normalised columns that :mod:`csplugin.core.native` writes back.

    :func:`alignments3d_columns`, plus ``uid`` from csplugin's ``rlnCsPluginUid`` column
    of a ``.star`` that csplugin wrote from a ``.cs`` (so the uids still match the passthrough),
    and ``class_index`` from ``csplugin/relion_class_number`` (RELION numbers of a ``.star``
    whose particles include class 0, "no class", which becomes -1).
    """
    columns = alignments3d_columns(native, p)
    if isinstance(native, pd.DataFrame) and Relion.CSPLUGIN_UID in native:
        columns["uid"] = uid_from_star(native[Relion.CSPLUGIN_UID])
    names = set(native.dtype.names or ()) if isinstance(native, np.ndarray) else set()
    if Cs.CSPLUGIN_RELION_CLASS in names:
        columns["class_index"] = from_base(native[Cs.CSPLUGIN_RELION_CLASS], RELION_BASE)
    if Cs.A3D_CLASS_POSTERIOR in names and Cs.A2D_CLASS_POSTERIOR not in names:
        columns["class_posterior"] = native[Cs.A3D_CLASS_POSTERIOR].astype(np.float64)
    return columns


def uid_from_star(values: pd.Series) -> np.ndarray:
    """``rlnCsPluginUid`` values (uint64 written as decimal integers) -> uint64, exactly,
    whatever dtype the STAR parser gave them (int64, uint64 or text)."""
    if values.dtype.kind in "iu":
        return values.to_numpy().astype(np.uint64)
    return np.array([int(str(v)) for v in values], dtype=np.uint64)
