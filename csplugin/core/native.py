"""The native codec: a :class:`~csplugin.core.particles.ParticleTable` written back as a
cryoSPARC ``.cs`` or a RELION ``.star``.

Reading lives in :mod:`csplugin.core.particles`; field names in :mod:`csplugin.core.fields`;
unit, sign and numbering conventions in :mod:`csplugin.core.conventions`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from csplugin.core import conventions as cv
from csplugin.core.fields import (
    CTF_FIELDS,
    GROUP_NAME,
    OPTICS_LABELS,
    RELION_POSE_LABELS,
    Cs,
    Relion,
)
from csplugin.core.particles import ParticleTable
from formats import InputError
from formats.cs import encode, write_cs
from formats.star import join_image_names, write_star


# ---------------------------------------------------------------------------------------- write
def to_cs(table: ParticleTable) -> np.ndarray:
    """The table as a cryoSPARC structured array ``(n,)``.

    Fields csplugin understands come from the normalised columns; for a ``.cs`` input every
    other field is carried over unchanged. ``alignments2D/psize_A`` is set to
    ``blob/psize_A`` because shifts are written in particle pixels. Without an input
    ``blob/sign``, ``blob/sign`` is -1 (what cryoSPARC's Import Particles writes for data
    whose sign is not flipped), so the ``blob`` slot is complete.
    """
    p = table.particles
    n = len(p)
    pose, shift = cv.to_cryosparc_pose(p["angle"].to_numpy(), p[["shift_x", "shift_y"]].to_numpy())
    new: dict[str, np.ndarray] = {
        Cs.UID: p[Cs.UID].to_numpy(np.uint64),
        Cs.BLOB_PATH: encode(p["image_path"].to_numpy(str)) if n else np.zeros(0, "S1"),
        Cs.BLOB_IDX: cv.to_base(p["stack_index"].to_numpy(), cv.CRYOSPARC_BASE).astype(np.uint32),
        Cs.BLOB_SHAPE: np.repeat(p["box"].to_numpy(np.uint32)[:, None], 2, axis=1),
        Cs.BLOB_PSIZE: p["pixel_size"].to_numpy(np.float32),
        Cs.A2D_POSE: pose,
        Cs.A2D_SHIFT: shift,
        Cs.A2D_PSIZE: p["pixel_size"].to_numpy(np.float32),
    }
    if (p["class_index"] >= 0).any():
        new[Cs.A2D_CLASS] = cv.to_base(p["class_index"].clip(lower=0).to_numpy(),
                                               cv.CRYOSPARC_BASE).astype(np.uint32)
    if p["class_posterior"].notna().any():
        new[Cs.A2D_CLASS_POSTERIOR] = p["class_posterior"].to_numpy(np.float32)
    if p["defocus_u"].notna().any():
        new[Cs.CTF_EXP_GROUP] = p["optics_group"].to_numpy(np.uint32)
        for cs_field, _, column, factor in CTF_FIELDS:
            if p[column].notna().any():
                new[cs_field] = (p[column].to_numpy(np.float64) / factor).astype(np.float32)
    if (p["helical_tube_id"] >= 0).any():
        new[Cs.FIL_UID] = p["helical_tube_id"].to_numpy(np.uint64)
    if p["psi_prior"].notna().any():
        new[Cs.FIL_POSE] = cv.psi_prior_to_filament_pose(p["psi_prior"]).astype(
            np.float32)
    if "micrograph" in p:
        new[Cs.LOC_MICROGRAPH_PATH] = encode(p["micrograph"].to_numpy(str))
    native = table.native if table.kind == "cs" else None
    if native is None or Cs.BLOB_SIGN not in native.dtype.names:
        new[Cs.BLOB_SIGN] = np.full(n, -1.0, np.float32)  # what cryoSPARC's import writes
    descr: list[tuple[str, np.dtype, tuple[int, ...]]] = []
    names = list(native.dtype.names) if native is not None else []
    names += [k for k in new if k not in names]
    for name in names:
        if name in new:
            value = new[name]
            if native is not None and name in native.dtype.names and \
                    native.dtype[name].kind == value.dtype.kind and value.dtype.kind != "S":
                dtype = native.dtype[name].base
            else:
                dtype = value.dtype
            descr.append((name, dtype, value.shape[1:]))
        else:
            field = native.dtype[name]
            descr.append((name, field.base, field.shape))
    out = np.zeros(n, dtype=descr)
    for name in names:
        out[name] = new[name] if name in new else native[name]
    return out


def to_star(table: ParticleTable) -> dict[str, pd.DataFrame]:
    """The table as RELION 3.1 blocks ``{"optics": ..., "particles": ...}``.

    Labels csplugin understands come from the normalised columns (origins in Å, psi in
    degrees, 1-based slices and classes); for a ``.star`` input its optics table and every
    other label are carried over unchanged, otherwise optics groups are made by
    :func:`_optics_table`.
    """
    p = table.particles
    psi, origin_px = cv.to_relion_pose(p["angle"].to_numpy(), p[["shift_x", "shift_y"]].to_numpy())
    origin_A = cv.origin_px_to_angstrom(origin_px, p["pixel_size"].to_numpy())
    if table.kind == "star" and table.optics is not None:  # RELION's own groups, unchanged
        optics, group = table.optics, table.native[Relion.OPTICS_GROUP].to_numpy(np.int64)
    else:
        optics, group = _optics_table(p)
    new: dict[str, np.ndarray] = {
        Relion.IMAGE_NAME: join_image_names(cv.to_base(p["stack_index"].to_numpy(), cv.RELION_BASE),
                                         p["image_path"].to_numpy(str)),
        Relion.ANGLE_PSI: psi,
        Relion.ORIGIN_X_ANGST: origin_A[:, 0],
        Relion.ORIGIN_Y_ANGST: origin_A[:, 1],
        Relion.OPTICS_GROUP: group,
    }
    if (p["class_index"] >= 0).any():
        new[Relion.CLASS_NUMBER] = cv.to_base(p["class_index"].to_numpy(), cv.RELION_BASE)
    if p["class_posterior"].notna().any():
        new[Relion.MAX_VALUE_PROB] = p["class_posterior"].to_numpy()
    for _, label, column, _ in CTF_FIELDS:
        if label not in OPTICS_LABELS and p[column].notna().any():
            new[label] = p[column].to_numpy()
    if (p["helical_tube_id"] >= 0).any():
        new[Relion.HELICAL_TUBE_ID] = p["helical_tube_id"].to_numpy()
    if p["psi_prior"].notna().any():
        new[Relion.ANGLE_PSI_PRIOR] = p["psi_prior"].to_numpy()
    for column, label in (("micrograph", Relion.MICROGRAPH_NAME), ("coordinate_x", Relion.COORDINATE_X),
                          ("coordinate_y", Relion.COORDINATE_Y)):
        if column in p:
            new[label] = p[column].to_numpy()
    if table.kind == "star":
        dropped = set(RELION_POSE_LABELS) | {Relion.MAGNIFICATION, Relion.DETECTOR_PIXEL_SIZE}
        dropped |= set(OPTICS_LABELS)  # they live in data_optics now
        particles = table.native.drop(columns=[c for c in table.native if c in dropped])
        particles = particles.reset_index(drop=True)
        for label, values in new.items():
            particles[label] = values
    else:
        particles = pd.DataFrame(new)
    return {"optics": optics, "particles": particles}


def _optics_table(p: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """RELION optics groups for particles that come without them.

    One group per (cryoSPARC ``exp_group_id``, pixel size, box), numbered 1..G and named
    ``exp_group_<id>`` so that reading the file back restores ``exp_group_id``.

    Returns
    -------
    (optics, group)
        The ``data_optics`` table and ``(n,)`` group numbers.
    """
    keys = p[["optics_group", "pixel_size", "box"]].astype({"optics_group": np.int64})
    first = keys.drop_duplicates().sort_values(list(keys.columns))  # index: a row of each group
    rows = first.index.to_numpy()
    number = pd.Series(np.arange(1, len(first) + 1), index=pd.MultiIndex.from_frame(first))
    group = number.loc[pd.MultiIndex.from_frame(keys)].to_numpy(np.int64) if len(p) else \
        np.zeros(0, np.int64)
    optics = pd.DataFrame({
        Relion.OPTICS_GROUP: np.arange(1, len(first) + 1),
        Relion.OPTICS_GROUP_NAME: [f"{GROUP_NAME}{g}" for g in first["optics_group"]],
        Relion.IMAGE_PIXEL_SIZE: first["pixel_size"].to_numpy(),
        Relion.IMAGE_SIZE: first["box"].to_numpy(),
        Relion.IMAGE_DIMENSIONALITY: 2,
    })
    for _, label, column, _ in CTF_FIELDS:
        if label in OPTICS_LABELS:
            optics[label] = p[column].to_numpy()[rows]
    if p["ctf_premultiplied"].any():
        optics[Relion.CTF_PREMULTIPLIED] = p["ctf_premultiplied"].to_numpy(int)[rows]
    return optics.dropna(axis=1, how="all"), group


def save_particles(table: ParticleTable, path: str | Path) -> None:
    """Write the table as ``.star`` (RELION 3.1) or ``.cs`` (numpy encoding), by suffix."""
    path = Path(path)
    if path.suffix == ".star":
        write_star(path, to_star(table))
    elif path.suffix == ".cs":
        write_cs(path, to_cs(table))
    else:
        raise InputError(path, "has an unknown output suffix", "name the output .star or .cs")
