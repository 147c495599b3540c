"""Checks made while reading a particle file, so that bad values fail at open, in one line.

Used by :mod:`csplugin.core.particles`: what a STAR file is (tomography and other files are
refused by :mod:`csplugin.core.identify` before anything else), a damaged line, a value that
is not a (finite, whole) number, particles without ``rlnOpticsGroup`` beside an optics table
(read as RELION reads them), unknown optics groups, and, once the table is built, pixel sizes
that are not positive and angles or shifts that are not finite. Each error names the file,
the particle (line and image name, or row and uid) and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from csplugin.core import identify
from csplugin.core.fields import CTF_FIELDS as _CTF_FIELDS
from csplugin.core.fields import Cs, Relion
from formats import InputError
from formats.mrc import open_stack
from formats.star import particle_blocks, read_star

#: A :class:`csplugin.core.particles.ParticleTable` (which imports this module).
ParticleTable = Any

#: Labels csplugin reads as numbers; a value that is not one is named with its line.
_NUMERIC_LABELS = (
    Relion.ANGLE_ROT, Relion.ANGLE_TILT, Relion.ANGLE_PSI, Relion.ANGLE_PSI_PRIOR,
    Relion.ORIGIN_X, Relion.ORIGIN_Y, Relion.ORIGIN_X_ANGST, Relion.ORIGIN_Y_ANGST,
    Relion.CLASS_NUMBER, Relion.MAX_VALUE_PROB, Relion.OPTICS_GROUP, Relion.IMAGE_PIXEL_SIZE,
    Relion.IMAGE_SIZE, Relion.IMAGE_DIMENSIONALITY, Relion.CTF_PREMULTIPLIED,
    Relion.MAGNIFICATION, Relion.DETECTOR_PIXEL_SIZE, Relion.VOLTAGE,
    Relion.SPHERICAL_ABERRATION, Relion.AMPLITUDE_CONTRAST, Relion.DEFOCUS_U, Relion.DEFOCUS_V,
    Relion.DEFOCUS_ANGLE, Relion.PHASE_SHIFT, Relion.CTF_BFACTOR, Relion.CTF_SCALEFACTOR,
    Relion.HELICAL_TUBE_ID, Relion.COORDINATE_X, Relion.COORDINATE_Y, Relion.ANGLE_TILT_PRIOR,
    Relion.ANGLE_ROT_PRIOR, Relion.RANDOM_SUBSET, Relion.CSPLUGIN_UID,
)


def read_particle_star(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None,
                                             identify.StarOutline]:
    """The particle and optics tables of a STAR file, after checking what the file is.

    Tomography and other non-particle files are refused (:class:`identify.NotParticles`)
    before anything else; then a line with the wrong number of values and a value that is not
    a number in a numeric column are named with their line.
    """
    if path.is_file():
        outline = identify.star_outline(path)
        found = identify.identify_star(path, outline)
        if found is not None:
            raise found
    else:
        outline = identify.StarOutline()
    for name in ("optics", identify.particle_block_name(outline)):
        if name in outline.bad_row:
            line, values, text = outline.bad_row[name]
            problem = ("has an unbalanced quote" if values < 0 else
                       f"has {values} values but data_{name} has {len(outline.blocks[name])} "
                       "labels")
            raise InputError(path, f"line {line} {problem}: {text!r}",
                             "fix or remove that line (the file is damaged or was edited by hand)")
    particles, optics = particle_blocks(read_star(path), path)
    if len(particles) == 0:
        raise InputError(path, "holds no particles (its particle table has no rows)",
                         "pass a particles .star that lists particles")
    found = identify.identify_tables(path, particles, optics, outline)
    if found is not None:
        raise found
    block = identify.particle_block_name(outline)
    for name, table in (("optics", optics), (block, particles)):
        if table is not None:
            _numeric_or_refuse(path, table, name, outline)
    return particles, optics, outline


def _numeric_or_refuse(path: Path, table: pd.DataFrame, block: str,
                       outline: identify.StarOutline) -> None:
    """Raise :class:`InputError` naming the first value of a numeric label that is not a
    finite number (or, for a count or group number, not a whole number), with its line."""
    names = table[Relion.IMAGE_NAME].astype(str).to_numpy() if Relion.IMAGE_NAME in table \
        else None

    def where(row: int) -> str:
        line = identify.star_row_line(outline, block, row)
        at = f"line {line}" if line is not None else f"row {row + 1} of data_{block}"
        return f"particle {row + 1} ({at}, {names[row]})" if names is not None else at

    for label in _NUMERIC_LABELS:
        if label not in table:
            continue
        column = table[label]
        numbers = column if pd.api.types.is_numeric_dtype(column) else \
            pd.to_numeric(column, errors="coerce")
        values = numbers.to_numpy(np.float64)
        finite = np.isfinite(values)
        if finite.all() and (label not in _WHOLE_LABELS or (values == np.round(values)).all()):
            continue
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            text = str(column.iloc[row]).strip()
            if np.isnan(values[row]) and text.lower() not in ("nan", "none", ""):
                raise InputError(path, f"{where(row)}: {label} is {text!r}, not a number",
                                 "fix that value (the file is damaged or was edited by hand)")
            raise InputError(path, f"{where(row)}: {label} is {text or 'empty'}, not a finite "
                             "number", "fix or remove that particle")
        row = int(np.flatnonzero(values != np.round(values))[0])
        raise InputError(path, f"{where(row)}: {label} is {values[row]:g}, not a whole number",
                         "fix that value (the file is damaged or was edited by hand)")


#: Numeric labels whose values are counts or numbers of groups, classes or tubes.
_WHOLE_LABELS = (Relion.CLASS_NUMBER, Relion.OPTICS_GROUP, Relion.IMAGE_SIZE,
                 Relion.IMAGE_DIMENSIONALITY, Relion.HELICAL_TUBE_ID, Relion.RANDOM_SUBSET,
                 Relion.CSPLUGIN_UID)


def single_optics_group(path: Path, particles: pd.DataFrame, optics: pd.DataFrame
                         ) -> pd.DataFrame:
    """Particles without ``rlnOpticsGroup`` beside a ``data_optics`` table, as RELION reads them.

    RELION 3.1 reads such a file with every particle in optics group 1. With one group that
    is exactly right, so the column is added; with several groups it is a guess RELION makes
    silently, so unless all groups describe the same optics, which group each particle
    belongs to is unknown and the file is refused.
    """
    if Relion.OPTICS_GROUP in particles:
        if Relion.OPTICS_GROUP not in optics:
            raise InputError(path, "has a data_optics table without rlnOpticsGroup numbers",
                             "number the optics groups (rlnOpticsGroup 1, 2, ...)")
        return particles
    if Relion.OPTICS_GROUP not in optics or len(optics) == 0:
        raise InputError(path, "has a data_optics table without rlnOpticsGroup numbers",
                         "number the optics groups (rlnOpticsGroup 1, 2, ...)")
    described = optics.drop(columns=[c for c in (Relion.OPTICS_GROUP, Relion.OPTICS_GROUP_NAME)
                                     if c in optics])
    if len(optics) > 1 and len(described.drop_duplicates()) > 1:
        raise InputError(path, f"has {len(optics)} different optics groups but its particles lack "
                         "rlnOpticsGroup, so which group each particle is in is unknown (RELION "
                         "would silently put them all in group 1)",
                         "add rlnOpticsGroup to data_particles")
    first = int(pd.to_numeric(optics[Relion.OPTICS_GROUP]).iloc[0])
    return particles.assign(**{Relion.OPTICS_GROUP: np.full(len(particles), first, np.int64)})


def known_optics_groups(path: Path, particles: pd.DataFrame, optics: pd.DataFrame,
                         outline: identify.StarOutline) -> None:
    """Raise :class:`InputError` if a particle names an optics group ``data_optics`` lacks."""
    known = set(pd.to_numeric(optics[Relion.OPTICS_GROUP]).tolist()) \
        if Relion.OPTICS_GROUP in optics else set()
    groups = particles[Relion.OPTICS_GROUP]
    unknown = ~groups.isin(known)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        line = identify.star_row_line(outline, identify.particle_block_name(outline), row)
        where = f" (line {line})" if line is not None else ""
        raise InputError(path, f"particle {row + 1}{where} is in optics group {groups.iloc[row]}, "
                         f"which data_optics does not list (groups: "
                         f"{', '.join(map(str, sorted(known))) or 'none'})",
                         "add that group to data_optics or fix rlnOpticsGroup")


def check_values(table: ParticleTable) -> None:
    """Refuse pixel sizes that are not positive and angles or shifts that are not finite.

    Raised at open time, naming the file, the particle and the field, so that no job starts
    on values that would turn into NaN images or a 0 Å/px header minutes later.
    """
    p, path, n = table.particles, table.source, len(table)
    if n == 0:
        return
    if table.kind == "cs":
        uids = p["uid"].to_numpy()

        def where(i: int) -> str:
            return f"row {i} (uid {uids[i]})"
        size_field = Cs.BLOB_PSIZE
        angle_field, shift_field = Cs.A2D_POSE, Cs.A2D_SHIFT
    else:
        names = table.native[Relion.IMAGE_NAME].to_numpy()

        def where(i: int) -> str:  # only called for an error: the file is scanned then
            first_line = _first_row_line(table)
            line = f"line {first_line + i}, " if first_line is not None else ""
            return f"particle {i + 1} ({line}{names[i]})"
        columns = set(table.native)
        size_field = (f"{Relion.IMAGE_PIXEL_SIZE} in data_optics" if table.optics is not None
                      else f"{Relion.DETECTOR_PIXEL_SIZE} and {Relion.MAGNIFICATION}")
        angle_field = Relion.ANGLE_PSI
        shift_field = (f"{Relion.ORIGIN_X_ANGST}/{Relion.ORIGIN_Y_ANGST}"
                       if Relion.ORIGIN_X_ANGST in columns else
                       f"{Relion.ORIGIN_X}/{Relion.ORIGIN_Y}")
    size = p["pixel_size"].to_numpy(np.float64)
    bad = ~(np.isfinite(size) & (size > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        if np.isnan(size[i]):
            given = f"has no pixel size (no {size_field})"
            fix = (f"add the pixel size in Å: {size_field}" if table.kind == "cs" or
                   table.optics is not None else "add the pixel size in Å: rlnImagePixelSize in "
                   "a data_optics table (RELION 3.1) or rlnDetectorPixelSize and rlnMagnification")
        else:
            given = f"has pixel size {size[i]:g} ({size_field})"
            fix = f"set {size_field} to the particles' pixel size in Å"
        raise InputError(path, f"{where(i)} {given}, and "
                         f"{_header_pixel_size(p['stack'].iloc[i])}", fix)
    if table.kind == "cs" and Cs.A2D_PSIZE in table.native.dtype.names \
            and Cs.A2D_POSE in table.native.dtype.names:
        a2d = table.native[Cs.A2D_PSIZE].astype(np.float64)
        bad = ~(np.isfinite(a2d) & (a2d > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(path, f"{where(i)}: {Cs.A2D_PSIZE} is {a2d[i]:g}, so its shift "
                             "has no pixel size", f"set {Cs.A2D_PSIZE} (normally {Cs.BLOB_PSIZE})")
    identify.finite_or_refuse(path, p["angle"].to_numpy(), angle_field, where)
    identify.finite_or_refuse(path, p[["shift_x", "shift_y"]].to_numpy(), shift_field, where)
    if table.kind == "cs":  # .star values were checked label by label on reading
        names = table.native.dtype.names
        for cs_field in [f for f, _, _, _ in _CTF_FIELDS] + [Cs.A2D_CLASS_POSTERIOR]:
            if cs_field in names:
                identify.finite_or_refuse(path, table.native[cs_field], cs_field, where)


def _first_row_line(table: ParticleTable) -> int | None:
    """The line of the first particle row of a STAR input (None if unknown)."""
    if not table.source.is_file():
        return None
    outline = identify.star_outline(table.source)
    return identify.star_row_line(outline, identify.particle_block_name(outline), 0)


def _header_pixel_size(stack: str) -> str:
    """What a stack's header says about the pixel size, for a message."""
    name = Path(stack).name
    if not Path(stack).is_file():
        return f"its stack {name} is not found, so no header can say either"
    try:
        voxel = open_stack(stack).voxel_size
    except InputError:
        return f"its stack {name} cannot be read for a header pixel size"
    if np.isfinite(voxel) and voxel > 0:
        return f"the header of its stack {name} says {voxel:g} Å/px (not used without the field)"
    return f"the header of its stack {name} gives none either (voxel size {voxel:g})"


def header_box(stack: str) -> int:
    """A stack's image width from its header; 0 when it cannot be read (the stack check that
    every job and ``csplugin info`` make says why)."""
    try:
        return open_stack(stack).box[1] if Path(stack).is_file() else 0
    except InputError:
        return 0
