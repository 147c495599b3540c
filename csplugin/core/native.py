"""The native codec: a :class:`~csplugin.core.particles.ParticleTable` written back as a
cryoSPARC ``.cs`` or a RELION 3.1 ``.star``.

Reading lives in :mod:`csplugin.core.particles`; field names in :mod:`csplugin.core.fields`;
unit, sign and numbering conventions in :mod:`csplugin.core.conventions`.

What is written (both directions)
---------------------------------
* **Only the alignments the input has.** A 2D alignment (``alignments2D/pose``+``shift`` ⇄
  ``rlnAnglePsi``+``rlnOriginX/YAngst``) only when the input had one; a 3D alignment
  (``alignments3D/pose``+``shift`` ⇄ ``rlnAngleRot/Tilt/Psi``+origins, class, half-set)
  only when the input had one. A ``.cs`` holding both writes the 2D one to ``.star`` (RELION
  has one pose per particle; :func:`notes` says so).
* **Optics.** ``ctf/exp_group_id`` ⇄ RELION optics group: a group id ≥ 1 keeps its number, so
  ``.star → .cs → .star`` keeps the groups (named ``exp_group_<id>``). Voltage, Cs and
  amplitude contrast travel even without per-particle defocus. A ``.star`` is written only
  when every optics group has all three (RELION 3.1 cannot read it otherwise): from the
  input, else from ``voltage=``/``cs=``/``amplitude_contrast=``, else :class:`InputError`.
* **uid** travels through ``.star`` in csplugin's own label ``rlnCsPluginUid`` (RELION 3.1
  warns "will ignore (but maintain) values for the unknown label" and keeps it).
* **Classes.** RELION class 0 ("no class") has no cryoSPARC equivalent (0-based, unsigned);
  such files keep their RELION numbers in ``csplugin/relion_class_number``.
* **Coordinates** ``rlnCoordinateX/Y`` ⇄ ``location/center_x/y_frac`` with
  ``location/micrograph_shape``, only where the micrograph's shape is known (a ``.cs`` input,
  or micrographs readable on disk); nothing is invented otherwise.
* Never ``blob/shape`` 0 or a non-positive pixel size.
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
    RELION_EULER_LABELS,
    RELION_POSE_LABELS,
    Cs,
    Relion,
)
from csplugin.core.particles import ParticleTable
from formats import InputError
from formats.cs import encode, find_passthrough, write_cs
from formats.mrc import open_stack
from formats.star import join_image_names, write_star

#: Internal columns of the three optics values a RELION .star needs, with their option names.
_REQUIRED_OPTICS = (("voltage", Relion.VOLTAGE, "--voltage"),
                    ("cs", Relion.SPHERICAL_ABERRATION, "--cs"),
                    ("amplitude_contrast", Relion.AMPLITUDE_CONTRAST, "--amplitude-contrast"))


# ------------------------------------------------------------------------------------ what is in
def has_3d(table: ParticleTable) -> bool:
    """Whether the table carries a 3D alignment (``alignments3D`` or rot/tilt/psi)."""
    return "euler_rot" in table.particles


def _has_2d(table: ParticleTable) -> bool:
    """Whether the table carries an in-plane alignment of its own (not the psi of a 3D pose)."""
    return table.aligned and not (table.kind == "star" and has_3d(table))


def _native_names(table: ParticleTable) -> set[str]:
    return set(table.native.dtype.names or ()) if table.kind == "cs" else set(table.native)


def _check_blob(table: ParticleTable) -> None:
    """Never write a box of 0 px or a non-positive pixel size."""
    p = table.particles
    box = p["box"].to_numpy()
    if len(box) and (box <= 0).any():
        first = p.loc[box <= 0, "image_path"].iloc[0]
        raise InputError(table.source, f"gives no box size for stack {first} (0 px) and its "
                         "header could not be read", "put the stacks where the file's paths "
                         "point (or pass --project-dir) so that their headers give the box")
    psize = p["pixel_size"].to_numpy(np.float64)
    bad = ~(np.isfinite(psize) & (psize > 0))
    if bad.any():
        raise InputError(table.source, f"has pixel size {psize[bad][0]} Å",
                         "give the particles a positive pixel size")


def notes(table: ParticleTable, suffix: str) -> list[str]:
    """Plain-language notes on what writing ``table`` as ``suffix`` (``.cs``/``.star``) does
    not carry, for the ``convert`` command to print (empty when everything travels)."""
    out: list[str] = []
    p = table.particles
    if suffix == ".star" and has_3d(table) and _has_2d(table):
        out.append("the .cs holds both alignments2D and alignments3D; the .star gets the 2D "
                   "alignment (rlnAnglePsi, origins); alignments3D is not written")
    if suffix == ".star" and table.kind == "cs" and p["voltage"].isna().all():
        out.append(_no_ctf_reason(table))
    if suffix == ".star" and table.kind == "cs":
        base = _names_base_elsewhere(p)
        if base is not None:
            out.append(f"image names kept as the .cs gives them, relative to {base} (where "
                       "its stacks were found), not to the current directory: run RELION (and "
                       "csplugin on this .star) from there, or pass --project-dir")
    if suffix == ".star" and p["image_path"].str.endswith(".mrc").any():
        out.append("stacks named .mrc (as cryoSPARC writes them): RELION 3.1 reads stacks only "
                   "as .mrcs, so link them (ln -s x.mrc x.mrcs) and rename in the .star, or "
                   "export aligned stacks")
    if suffix == ".cs" and "coordinate_x" in p and table.kind == "star" \
            and _micrograph_shapes(table) is None:
        out.append("rlnCoordinateX/Y not written to location/*: the micrographs' shapes are "
                   "unknown (micrographs not found), and none is invented")
    if suffix == ".cs" and table.kind == "star" and p["psi_prior"].notna().any() \
            and not (p["helical_tube_id"] >= 0).any():
        out.append("rlnAnglePsiPrior not written: without rlnHelicalTubeID it is not a "
                   "filament pose")
    return out


def _names_base_elsewhere(p: pd.DataFrame) -> Path | None:
    """The directory the relative image names start from, when that is not the current
    directory (a ``.cs`` names stacks from its cryoSPARC project directory); else ``None``."""
    for name, stack in p[["image_path", "stack"]].drop_duplicates().itertuples(index=False):
        name, stack = Path(str(name)), Path(str(stack))
        if name.is_absolute() or (Path.cwd() / name).is_file() or not stack.is_file():
            continue
        if stack.parts[-len(name.parts):] == name.parts:
            return Path(*stack.parts[:-len(name.parts)])
    return None


def _no_ctf_reason(table: ParticleTable) -> str:
    """Why a ``.cs`` table has no ``ctf/`` fields, naming the passthrough."""
    found = find_passthrough(table.source)
    where = f"not in its passthrough {found.name} either" if found is not None else \
        "usually in J##_passthrough_particles.cs, which was not found beside it"
    return f"has no ctf/ fields (voltage, Cs, amplitude contrast: {where})"


# ------------------------------------------------------------------------------------------ .cs
def to_cs(table: ParticleTable) -> np.ndarray:
    """The table as a cryoSPARC structured array ``(n,)``.

    Fields csplugin understands come from the normalised columns; for a ``.cs`` input every
    other field is carried over unchanged. Alignments are written only where the input had
    them (see the module docstring). ``alignments2D/psize_A`` is set to ``blob/psize_A``
    because shifts are written in particle pixels. Without an input ``blob/sign``,
    ``blob/sign`` is -1 (what cryoSPARC's Import Particles writes for data whose sign is not
    flipped), so the ``blob`` slot is complete.

    Raises
    ------
    InputError
        A box size of 0 (unknown) or a non-positive pixel size.
    """
    _check_blob(table)
    p = table.particles
    n = len(p)
    native = table.native if table.kind == "cs" else None
    names = _native_names(table)
    psize = p["pixel_size"].to_numpy(np.float32)
    new: dict[str, np.ndarray] = {
        Cs.UID: p["uid"].to_numpy(np.uint64),
        Cs.BLOB_PATH: encode(p["image_path"].to_numpy(str)) if n else np.zeros(0, "S1"),
        Cs.BLOB_IDX: cv.to_base(p["stack_index"].to_numpy(), cv.CRYOSPARC_BASE).astype(np.uint32),
        Cs.BLOB_SHAPE: np.repeat(p["box"].to_numpy(np.uint32)[:, None], 2, axis=1),
        Cs.BLOB_PSIZE: psize,
    }
    klass = p["class_index"].to_numpy(np.int64)
    if _has_2d(table):
        pose, shift = cv.to_cryosparc_pose(p["angle"].to_numpy(),
                                           p[["shift_x", "shift_y"]].to_numpy())
        new.update({Cs.A2D_POSE: pose, Cs.A2D_SHIFT: shift, Cs.A2D_PSIZE: psize})
    if has_3d(table) and table.kind == "star":  # a .cs input keeps its own alignments3D
        euler = p[["euler_rot", "euler_tilt", "euler_psi"]].to_numpy(np.float64)
        new[Cs.A3D_POSE] = cv.relion_euler_to_rotvec(euler)
        new[Cs.A3D_SHIFT] = p[["shift3d_x", "shift3d_y"]].to_numpy(np.float32)
        new[Cs.A3D_PSIZE] = psize
        subset = p["random_subset"].to_numpy(np.int64)
        if n and (subset > 0).all():
            new[Cs.A3D_SPLIT] = cv.random_subset_to_split(subset).astype(np.uint32)
    class_slot = Cs.A3D_CLASS if has_3d(table) and not _has_2d(table) else Cs.A2D_CLASS
    star_classes = table.kind == "star" and Relion.CLASS_NUMBER in names
    if n and (klass >= 0).all():
        new[Cs.A2D_CLASS if Cs.A2D_CLASS in names else class_slot] = \
            cv.to_base(klass, cv.CRYOSPARC_BASE).astype(np.uint32)
    elif n and ((klass >= 0).any() or star_classes):  # "no class" (RELION 0) among them
        new[Cs.CSPLUGIN_RELION_CLASS] = cv.to_base(klass, cv.RELION_BASE).astype(np.uint32)
    if p["class_posterior"].notna().any():
        new[Cs.A2D_CLASS_POSTERIOR if class_slot == Cs.A2D_CLASS else Cs.A3D_CLASS_POSTERIOR] = \
            p["class_posterior"].to_numpy(np.float32)
    ctf_known = [c for _, _, c, _ in CTF_FIELDS if p[c].notna().any()]
    if ctf_known or table.kind == "star":
        new[Cs.CTF_EXP_GROUP] = p["optics_group"].to_numpy(np.uint32)
    for cs_field, _, column, factor in CTF_FIELDS:
        if column in ctf_known:
            new[cs_field] = (p[column].to_numpy(np.float64) / factor).astype(np.float32)
    helical = bool((p["helical_tube_id"] >= 0).any())
    if helical:
        new[Cs.FIL_UID] = p["helical_tube_id"].to_numpy(np.uint64)
    if p["psi_prior"].notna().any() and (helical or table.kind == "cs"):
        new[Cs.FIL_POSE] = cv.psi_prior_to_filament_pose(p["psi_prior"]).astype(np.float32)
    if "micrograph" in p:
        new[Cs.LOC_MICROGRAPH_PATH] = encode(p["micrograph"].to_numpy(str))
    if table.kind == "star" and "coordinate_x" in p:
        shapes = _micrograph_shapes(table)
        if shapes is not None:
            x, y = cv.coordinates_to_location(p["coordinate_x"], p["coordinate_y"], shapes)
            new[Cs.LOC_MICROGRAPH_SHAPE] = shapes.astype(np.uint32)
            new[Cs.LOC_CENTER_X], new[Cs.LOC_CENTER_Y] = x, y
    if native is None or Cs.BLOB_SIGN not in names:
        new[Cs.BLOB_SIGN] = np.full(n, -1.0, np.float32)  # what cryoSPARC's import writes
    return _structured(native, new, n)


def _structured(native: np.ndarray | None, new: dict[str, np.ndarray], n: int) -> np.ndarray:
    """A structured array of the native fields (in their order, new values replacing them)
    followed by the new fields; native dtypes are kept where the kinds agree."""
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


def _micrograph_shapes(table: ParticleTable) -> np.ndarray | None:
    """``(n, 2)`` ``[ny, nx]`` of each particle's micrograph, read from the micrograph headers
    (relative names from the current directory, then the input's directory); ``None`` when
    any micrograph is not readable."""
    p = table.particles
    if "micrograph" not in p:
        return None
    shapes: dict[str, tuple[int, int]] = {}
    for name in p["micrograph"].astype(str).unique():
        path = Path(name)
        candidates = [path] if path.is_absolute() else [Path.cwd() / path,
                                                         table.source.parent / path]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            return None
        try:
            shapes[name] = open_stack(found).box
        except InputError:
            return None
    return np.array([shapes[m] for m in p["micrograph"].astype(str)], np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------- .star
def to_star(table: ParticleTable, *, voltage: float | None = None, cs: float | None = None,
            amplitude_contrast: float | None = None) -> dict[str, pd.DataFrame]:
    """The table as RELION 3.1 blocks ``{"optics": ..., "particles": ...}``.

    Labels csplugin understands come from the normalised columns (origins in Å, psi in
    degrees, 1-based slices and classes); for a ``.star`` input its optics table and every
    other label are carried over unchanged, otherwise optics groups are made by
    :func:`_optics_table`. Alignments are written only where the input had them.

    Parameters
    ----------
    voltage, cs, amplitude_contrast
        kV, mm and fraction for optics groups that lack them (e.g. a ``.cs`` without its
        passthrough); values the input has are never replaced.

    Raises
    ------
    InputError
        An optics group lacks voltage, Cs or amplitude contrast and no value is given (RELION
        cannot read such a file), or the box size is unknown.
    """
    _check_blob(table)
    p = table.particles
    n = len(p)
    defaults = {"voltage": voltage, "cs": cs, "amplitude_contrast": amplitude_contrast}
    if table.kind == "star" and table.optics is not None:  # RELION's own groups, unchanged
        optics = _fill_optics(table, table.optics.copy(), defaults)
        group = table.native[Relion.OPTICS_GROUP].to_numpy(np.int64) \
            if Relion.OPTICS_GROUP in table.native else np.ones(n, np.int64)
    else:
        optics, group = _optics_table(table, defaults)
    new: dict[str, np.ndarray] = {
        Relion.IMAGE_NAME: join_image_names(cv.to_base(p["stack_index"].to_numpy(),
                                                       cv.RELION_BASE),
                                            p["image_path"].to_numpy(str)),
        Relion.OPTICS_GROUP: group,
    }
    three_d = has_3d(table) and not (table.kind == "cs" and _has_2d(table))
    if table.aligned or three_d:
        if table.aligned:
            angle, shift = p["angle"].to_numpy(), p[["shift_x", "shift_y"]].to_numpy()
            psi, origin_px = cv.to_relion_pose(angle, shift)
        else:
            psi = p["euler_psi"].to_numpy(np.float64)
            origin_px = p[["shift3d_x", "shift3d_y"]].to_numpy(np.float64)
        if three_d:
            new[Relion.ANGLE_ROT] = p["euler_rot"].to_numpy(np.float64)
            new[Relion.ANGLE_TILT] = p["euler_tilt"].to_numpy(np.float64)
        origin_A = cv.origin_px_to_angstrom(origin_px, p["pixel_size"].to_numpy())
        new[Relion.ANGLE_PSI] = psi
        new[Relion.ORIGIN_X_ANGST], new[Relion.ORIGIN_Y_ANGST] = origin_A[:, 0], origin_A[:, 1]
    klass = p["class_index"].to_numpy(np.int64)
    relion_classes = table.kind == "cs" and Cs.CSPLUGIN_RELION_CLASS in _native_names(table)
    if three_d and table.kind == "cs" and not relion_classes:
        klass = p["class3d_index"].to_numpy(np.int64)
    if (klass >= 0).any() or relion_classes:
        new[Relion.CLASS_NUMBER] = cv.to_base(klass, cv.RELION_BASE)  # -1 (none) -> 0
    if three_d and table.kind == "cs" and n and (p["random_subset"] > 0).all():
        new[Relion.RANDOM_SUBSET] = p["random_subset"].to_numpy(np.int64)
    if p["class_posterior"].notna().any():
        new[Relion.MAX_VALUE_PROB] = p["class_posterior"].to_numpy()
    for _, label, column, _ in CTF_FIELDS:
        if label not in OPTICS_LABELS and p[column].notna().any():
            new[label] = p[column].to_numpy()
    if (p["helical_tube_id"] >= 0).any():
        new[Relion.HELICAL_TUBE_ID] = p["helical_tube_id"].to_numpy()
    if p["psi_prior"].notna().any():
        new[Relion.ANGLE_PSI_PRIOR] = p["psi_prior"].to_numpy()
    for column, label in (("micrograph", Relion.MICROGRAPH_NAME),
                          ("coordinate_x", Relion.COORDINATE_X),
                          ("coordinate_y", Relion.COORDINATE_Y)):
        if column in p:
            new[label] = p[column].to_numpy()
    if table.kind == "cs" or Relion.CSPLUGIN_UID in table.native:
        new[Relion.CSPLUGIN_UID] = p["uid"].to_numpy(np.uint64)
    if table.kind == "star":
        dropped = set(RELION_POSE_LABELS) | {Relion.MAGNIFICATION, Relion.DETECTOR_PIXEL_SIZE}
        if three_d:
            dropped |= set(RELION_EULER_LABELS)
        dropped |= set(OPTICS_LABELS)  # they live in data_optics now
        particles = table.native.drop(columns=[c for c in table.native if c in dropped])
        particles = particles.reset_index(drop=True)
        for label, values in new.items():
            particles[label] = values
    else:
        particles = pd.DataFrame(new)
    return {"optics": optics, "particles": particles}


def _missing_optics(table: ParticleTable, what: list[str]) -> InputError:
    options = ", ".join(opt for col, _, opt in _REQUIRED_OPTICS if col in what)
    if table.kind == "cs":
        problem = _no_ctf_reason(table) + "; RELION cannot read a .star without them"
        fix = f"pass --passthrough J##_passthrough_particles.cs, or give {options}"
    else:
        labels = ", ".join(lab for col, lab, _ in _REQUIRED_OPTICS if col in what)
        problem = f"gives no {labels}; RELION cannot read a .star without them"
        fix = f"give {options}"
    return InputError(table.source, problem, fix)


def _fill_optics(table: ParticleTable, optics: pd.DataFrame,
                 defaults: dict[str, float | None]) -> pd.DataFrame:
    """A RELION optics table with voltage, Cs and amplitude contrast in every group: the
    input's values, else the particles' (RELION 3.0 style), else ``defaults``."""
    missing: list[str] = []
    for column, label, _ in _REQUIRED_OPTICS:
        values = optics[label].to_numpy(np.float64) if label in optics else \
            np.full(len(optics), np.nan)
        if np.isnan(values).any() and defaults[column] is not None:
            values = np.where(np.isnan(values), float(defaults[column]), values)
        if np.isnan(values).any():
            missing.append(column)
        optics[label] = values
    if missing:
        raise _missing_optics(table, missing)
    return optics


def _optics_table(table: ParticleTable, defaults: dict[str, float | None] | None = None
                  ) -> tuple[pd.DataFrame, np.ndarray]:
    """RELION optics groups for particles that come without them.

    One group per (cryoSPARC ``exp_group_id``, pixel size, box), named ``exp_group_<id>`` so
    that reading the file back restores ``exp_group_id``. Groups are numbered by their id
    when every id is ≥ 1 and names one (pixel size, box) (so a ``.star → .cs → .star`` round
    trip keeps RELION's numbers), else 1..G in order of (id, pixel size, box).

    Returns
    -------
    (optics, group)
        The ``data_optics`` table and ``(n,)`` group numbers.
    """
    p = table.particles
    keys = p[["optics_group", "pixel_size", "box"]].astype({"optics_group": np.int64})
    first = keys.drop_duplicates().sort_values(list(keys.columns))  # index: a row of each group
    rows = first.index.to_numpy()
    ids = first["optics_group"].to_numpy(np.int64)
    if len(ids) and (ids >= 1).all() and len(np.unique(ids)) == len(ids):
        numbers = ids
    else:
        numbers = np.arange(1, len(first) + 1)
    number = pd.Series(numbers, index=pd.MultiIndex.from_frame(first))
    group = number.loc[pd.MultiIndex.from_frame(keys)].to_numpy(np.int64) if len(p) else \
        np.zeros(0, np.int64)
    optics = pd.DataFrame({
        Relion.OPTICS_GROUP: numbers,
        Relion.OPTICS_GROUP_NAME: [f"{GROUP_NAME}{g}" for g in ids],
        Relion.IMAGE_PIXEL_SIZE: first["pixel_size"].to_numpy(),
        Relion.IMAGE_SIZE: first["box"].to_numpy(),
        Relion.IMAGE_DIMENSIONALITY: 2,
    })
    for _, label, column, _ in CTF_FIELDS:
        if label in OPTICS_LABELS:
            optics[label] = p[column].to_numpy(np.float64)[rows]
    optics = _fill_optics(table, optics, defaults or dict.fromkeys(("voltage", "cs",
                                                                     "amplitude_contrast")))
    if p["ctf_premultiplied"].any():
        optics[Relion.CTF_PREMULTIPLIED] = p["ctf_premultiplied"].to_numpy(int)[rows]
    return optics, group


# ---------------------------------------------------------------------------------------- save
def check_writable(table: ParticleTable, suffix: str, *, voltage: float | None = None,
                   cs: float | None = None, amplitude_contrast: float | None = None) -> None:
    """Raise the :class:`InputError` that :func:`save_particles` would raise for ``suffix``
    (``.star``/``.cs``), without writing: jobs call it before any work, so that a missing
    voltage or box size is said at once rather than after the compute."""
    if suffix == ".star":
        to_star(table, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast)
    elif suffix == ".cs":
        _check_blob(table)


def save_particles(table: ParticleTable, path: str | Path, *, voltage: float | None = None,
                   cs: float | None = None, amplitude_contrast: float | None = None) -> None:
    """Write the table as ``.star`` (RELION 3.1) or ``.cs`` (numpy encoding), by suffix.

    ``voltage`` (kV), ``cs`` (mm) and ``amplitude_contrast`` fill optics groups that lack
    them in a ``.star`` (see :func:`to_star`); a ``.cs`` does not need them.
    """
    path = Path(path)
    if path.suffix == ".star":
        write_star(path, to_star(table, voltage=voltage, cs=cs,
                                 amplitude_contrast=amplitude_contrast))
    elif path.suffix == ".cs":
        write_cs(path, to_cs(table))
    else:
        raise InputError(path, "has an unknown output suffix", "name the output .star or .cs")
