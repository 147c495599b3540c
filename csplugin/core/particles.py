"""The normalised particle table shared by every csplugin job, read from ``.cs`` or ``.star``.

Writing it back is :mod:`csplugin.core.native`.

:func:`open_particles` reads a cryoSPARC ``.cs`` (merged with its passthrough by ``uid``) or a
RELION ``.star`` and returns a :class:`ParticleTable`: one row per particle with the columns
below in csplugin's single internal convention (see :mod:`csplugin.core.conventions`), plus the
input's own rows, kept verbatim so that writing back loses nothing.

Normalised columns
------------------
==================  =====================================================================
``uid``             uint64; cryoSPARC's uid (generated from the row number for ``.star``)
``image_path``      stack path as written in the input (``>`` stripped)
``stack``           absolute path of the stack on this machine
``stack_index``     0-based image index within the stack
``whole_file``      ``.star`` only: the name had no ``N@`` (the whole file is the image)
``pixel_size``      Å/px of the particle images
``box``             image size N (pixels)
``angle``           θ, radians (internal convention)
``shift_x/_y``      s, pixels of the particle image (internal convention)
``class_index``     0-based class; -1 where the input has none
``class_posterior`` probability of the assigned class (NaN where absent)
``optics_group``    cryoSPARC ``ctf/exp_group_id`` / RELION optics group number
``defocus_u/_v``    Å; ``defocus_angle`` deg; ``voltage`` kV; ``cs`` mm;
``amplitude_contrast``, ``phase_shift`` deg, ``bfactor`` Å², ``ctf_scale``,
``ctf_premultiplied`` (bool)  -- NaN where the input has no CTF
``helical_tube_id``  int64 (-1 where absent); ``psi_prior`` deg (NaN where absent)
==================  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from csplugin.core import conventions as cv
from csplugin.core import identify, native_read
from csplugin.core.fields import CTF_FIELDS as _CTF_FIELDS
from csplugin.core.fields import GROUP_NAME as _GROUP_NAME
from csplugin.core.fields import OPTICS_LABELS as _OPTICS_LABELS
from csplugin.core.fields import Cs, Relion
from csplugin.core.images import ParticleImages
from formats import InputError
from formats.cs import decode, find_passthrough, merge_passthrough, read_cs
from formats.mrc import open_stack
from formats.star import particle_blocks, read_star, split_image_names

Kind = Literal["cs", "star"]

@dataclass(frozen=True)
class ParticleTable:
    """Particles in csplugin's internal convention, with the input's own rows.

    Attributes
    ----------
    particles
        Normalised table, one row per particle (columns in the module docstring).
    kind
        ``"cs"`` or ``"star"``: the input format.
    source
        The input file.
    native
        The input's rows in the same order: a structured array (``.cs``, passthrough merged)
        or the ``data_particles`` table (``.star``).
    optics
        The ``data_optics`` table of a RELION 3.1+ input, else ``None``.
    aligned
        Whether the input stores in-plane alignments (``alignments2D/pose`` in a ``.cs``;
        ``rlnAnglePsi`` or origins in a ``.star``); without them angles and shifts are 0.
    """

    particles: pd.DataFrame
    kind: Kind
    source: Path
    native: np.ndarray | pd.DataFrame
    optics: pd.DataFrame | None = None
    aligned: bool = True

    def __len__(self) -> int:
        return len(self.particles)

    @property
    def n(self) -> int:
        """Number of particles (``len(table)``)."""
        return len(self.particles)

    @cached_property
    def images(self) -> ParticleImages:
        """The raw particle images, read on demand: ``images[i:j]`` -> ``(k, N, N)`` float32
        in table order (:class:`csplugin.core.images.ParticleImages`; stacks checked on first
        use)."""
        return ParticleImages(self)

    @property
    def class_base(self) -> int:
        """How the input numbers classes: 0 (cryoSPARC) or 1 (RELION)."""
        return cv.CRYOSPARC_BASE if self.kind == "cs" else cv.RELION_BASE

    def take(self, rows: np.ndarray) -> ParticleTable:
        """The particles at positions ``rows`` (``(k,)`` int or ``(n,)`` bool), in that order."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        native = self.native[rows] if isinstance(self.native, np.ndarray) else \
            self.native.iloc[rows].reset_index(drop=True)
        return replace(self, particles=self.particles.iloc[rows].reset_index(drop=True),
                       native=native)

    def with_columns(self, **columns: object) -> ParticleTable:
        """A copy with normalised columns replaced (e.g. new stacks, zeroed poses)."""
        return replace(self, particles=self.particles.assign(**columns))

    def require_alignments(self) -> None:
        """Raise :class:`InputError` when the input stores no in-plane alignments."""
        if not self.aligned:
            what = "alignments2D fields" if self.kind == "cs" else "rlnAnglePsi or origins"
            raise InputError(self.source, f"has no {what}, so there is no 2D alignment to apply",
                             "pass the particles of a 2D classification job")

    def select_classes(self, classes: list[int] | None) -> ParticleTable:
        """Keep particles of the given classes, numbered as the input numbers them.

        Raises
        ------
        InputError
            A requested class has no particles (the message lists the classes present).
        """
        if classes is None:
            return self
        index = self.particles["class_index"].to_numpy()
        present = set(self.class_numbers()[index >= 0].tolist())
        unknown = sorted(set(classes) - present)
        if unknown:
            listing = ",".join(map(str, sorted(present))) or "none"
            raise InputError(self.source, f"selects no particles in class {unknown[0]} (classes "
                             f"present: {listing})", "check --classes against `csplugin info` "
                             "(0-based for .cs, 1-based for .star)")
        return self.take(np.isin(index, cv.from_base(np.asarray(classes), self.class_base)))

    def class_numbers(self) -> np.ndarray:
        """``(n,)`` class numbers in the input's own numbering (0-based .cs, 1-based .star)."""
        return cv.to_base(self.particles["class_index"].to_numpy(), self.class_base)

    def missing_stacks(self) -> list[str]:
        """Stack files referenced by the table that do not exist, sorted."""
        return sorted(s for s in self.particles["stack"].unique() if not Path(s).is_file())

    def pixel_size(self) -> float:
        """The single pixel size of all particles (Å); error if they differ."""
        sizes = np.unique(np.round(self.particles["pixel_size"].to_numpy(), 4))
        if len(sizes) != 1:
            raise InputError(self.source, f"mixes pixel sizes {', '.join(map(str, sizes))} Å",
                             "select particles of one pixel size (e.g. one optics group)")
        return float(self.particles["pixel_size"].iloc[0])

    def box(self) -> int:
        """The single box size of all particles (px); error if they differ."""
        boxes = np.unique(self.particles["box"].to_numpy())
        if len(boxes) != 1:
            raise InputError(self.source, f"mixes box sizes {', '.join(map(str, boxes))} px",
                             "select particles of one box size")
        return int(boxes[0])


# ----------------------------------------------------------------------------------------- read
def open_particles(path: str | Path, passthrough: str | Path | None = None,
                   project_dir: str | Path | None = None) -> ParticleTable:
    """Read a cryoSPARC ``.cs`` or RELION ``.star`` particle file into a :class:`ParticleTable`.

    Parameters
    ----------
    path
        ``.cs`` (its ``J##_passthrough_particles.cs`` is found beside it) or ``.star``.
    passthrough
        cryoSPARC passthrough file to merge by ``uid`` (default: found beside ``path``).
    project_dir
        Directory that relative stack paths start from. Default for ``.cs``: the directory
        containing the job directory (cryoSPARC project), falling back to the ``.cs`` file's
        own directory; for ``.star``: the current directory (where RELION runs), falling
        back to the ``.star`` file's directory.
    """
    path = Path(path)
    identify.refuse_lfs_pointer(path)
    if path.suffix == ".star":
        if passthrough is not None:
            raise InputError(passthrough, "a passthrough only goes with a cryoSPARC .cs input",
                             "drop --passthrough for .star input")
        with np.errstate(divide="ignore", invalid="ignore"):  # bad pixel sizes: _check_values
            table = _from_star(path)
        bases = [Path(project_dir)] if project_dir else [Path.cwd(), path.parent]
    elif path.suffix == ".cs":
        table = _from_cs(path, passthrough)
        bases = [Path(project_dir)] if project_dir else [path.parent.parent, path.parent]
    else:
        identify.refuse_image_file(path)
        raise InputError(path, "is neither a .cs nor a .star file",
                         "pass a cryoSPARC .cs or RELION .star particle file")
    p = table.particles
    p["stack"] = _resolve_stacks(p["image_path"], bases)
    _check_values(table)
    if (p["box"] == 0).any():  # RELION 3.0 files give no box size: read the stack headers
        boxes = {s: _header_box(s) for s in p["stack"].unique()}
        p["box"] = p["stack"].map(boxes).astype(np.int64)
    return table


def _resolve_stacks(image_paths: pd.Series, bases: list[Path]) -> pd.Series:
    """Absolute stack paths: each relative path joined to the first base where it exists."""
    resolved: dict[str, str] = {}
    for text in image_paths.unique():
        candidates = [Path(text)] if Path(text).is_absolute() else [b / text for b in bases]
        found = next((c for c in candidates if c.is_file()), candidates[0])
        resolved[text] = str(found.absolute())
    return image_paths.map(resolved)


def _from_cs(path: Path, passthrough: str | Path | None) -> ParticleTable:
    data = read_cs(path)
    pt_path = Path(passthrough) if passthrough is not None else find_passthrough(path)
    if pt_path is not None:
        identify.refuse_lfs_pointer(pt_path)
        data = merge_passthrough(data, read_cs(pt_path), pt_path)
    fields = set(data.dtype.names)
    found = identify.identify_cs(path, fields)
    if found is not None:
        raise found
    for needed in (Cs.BLOB_PATH, Cs.BLOB_IDX, Cs.BLOB_PSIZE, Cs.BLOB_SHAPE):
        if needed not in fields:
            raise InputError(path, f"has no field '{needed}'",
                             "pass the particles .cs of a job that outputs particle blobs")
    native_read.check_alignments(fields, path)
    n = len(data)
    p = pd.DataFrame({"uid": data["uid"].astype(np.uint64)})
    p["image_path"] = np.char.lstrip(decode(data[Cs.BLOB_PATH]), ">") if n else []
    p["stack_index"] = data[Cs.BLOB_IDX].astype(np.int64)
    p["pixel_size"] = data[Cs.BLOB_PSIZE].astype(np.float64)
    p["box"] = data[Cs.BLOB_SHAPE][:, -1].astype(np.int64) if n else []
    if Cs.A2D_POSE in fields:
        angle, shift = cv.from_cryosparc_pose(
            data[Cs.A2D_POSE], data[Cs.A2D_SHIFT],
            data[Cs.A2D_PSIZE] if Cs.A2D_PSIZE in fields else data[Cs.BLOB_PSIZE],
            data[Cs.BLOB_PSIZE])
    else:
        angle, shift = np.zeros(n), np.zeros((n, 2))
    p["angle"], p["shift_x"], p["shift_y"] = angle, shift[:, 0], shift[:, 1]
    p["class_index"] = (cv.from_base(data[Cs.A2D_CLASS], cv.CRYOSPARC_BASE)
                        if Cs.A2D_CLASS in fields else np.full(n, -1))
    p["class_posterior"] = _column(data, Cs.A2D_CLASS_POSTERIOR, n)
    p["optics_group"] = (data[Cs.CTF_EXP_GROUP].astype(np.int64)
                         if Cs.CTF_EXP_GROUP in fields else np.zeros(n, np.int64))
    for cs_field, _, column, factor in _CTF_FIELDS:
        p[column] = _column(data, cs_field, n) * factor
    p["ctf_premultiplied"] = False
    p["helical_tube_id"] = (data[Cs.FIL_UID].astype(np.int64)
                            if Cs.FIL_UID in fields else np.full(n, -1))
    p["psi_prior"] = (cv.filament_pose_to_psi_prior(data[Cs.FIL_POSE])
                      if Cs.FIL_POSE in fields else np.full(n, np.nan))
    _add_location_from_cs(p, data)
    p = p.assign(**native_read.native_columns(data, p))  # native.py writes them back
    return ParticleTable(p, "cs", path, data, aligned=Cs.A2D_POSE in fields)


def _column(data: np.ndarray, field: str, n: int) -> np.ndarray:
    """A float64 field of a structured array, or NaN where it is absent."""
    return data[field].astype(np.float64) if field in data.dtype.names else np.full(n, np.nan)


def _add_location_from_cs(p: pd.DataFrame, data: np.ndarray) -> None:
    names = data.dtype.names
    if Cs.LOC_MICROGRAPH_PATH in names:
        p["micrograph"] = decode(data[Cs.LOC_MICROGRAPH_PATH])
    if {Cs.LOC_CENTER_X, Cs.LOC_MICROGRAPH_SHAPE} <= set(names):
        shape = data[Cs.LOC_MICROGRAPH_SHAPE].astype(np.float64)  # [ny, nx]
        p["coordinate_x"] = data[Cs.LOC_CENTER_X] * shape[:, 1]
        p["coordinate_y"] = data[Cs.LOC_CENTER_Y] * shape[:, 0]


def _from_star(path: Path) -> ParticleTable:
    particles, optics, outline = _read_particle_star(path)
    native_read.check_alignments(particles.columns, path)
    particles = particles.reset_index(drop=True)
    n = len(particles)
    if optics is not None:
        particles = _single_optics_group(path, particles, optics)
        merged = particles[[Relion.OPTICS_GROUP]].merge(optics, on=Relion.OPTICS_GROUP, how="left")
        _known_optics_groups(path, particles, optics, outline)
        pixel_size = _label(merged, Relion.IMAGE_PIXEL_SIZE, n)  # checked in _check_values
        box = merged[Relion.IMAGE_SIZE].to_numpy(np.int64) if Relion.IMAGE_SIZE in merged else None
        group = particles[Relion.OPTICS_GROUP].to_numpy(np.int64)
        names = merged.get(Relion.OPTICS_GROUP_NAME)
        if names is not None:
            from_name = names.astype(str).str.extract(rf"^{_GROUP_NAME}(\d+)$")[0]
            group = np.where(from_name.notna(), pd.to_numeric(from_name), group).astype(np.int64)
        lookup = merged
    else:
        if {Relion.DETECTOR_PIXEL_SIZE, Relion.MAGNIFICATION} <= set(particles):
            pixel_size = cv.relion30_pixel_size(particles[Relion.DETECTOR_PIXEL_SIZE],
                                                particles[Relion.MAGNIFICATION])
        elif Relion.IMAGE_PIXEL_SIZE in particles:
            pixel_size = particles[Relion.IMAGE_PIXEL_SIZE].to_numpy(np.float64)
        else:  # no pixel size: _check_values says so, with what the stack header gives
            pixel_size = np.full(n, np.nan)
        box, group, lookup = None, np.ones(n, np.int64), particles
    numbers, stacks = split_image_names(particles[Relion.IMAGE_NAME], path)
    p = pd.DataFrame({"uid": np.arange(n, dtype=np.uint64)})
    p["image_path"] = stacks
    p["stack_index"] = cv.from_base(numbers, cv.RELION_BASE)
    # a name without N@ is the whole file: RELION reads a file of several sections as a volume
    p["whole_file"] = ~particles[Relion.IMAGE_NAME].astype(str).str.contains("@", regex=False)
    p["pixel_size"] = pixel_size
    p["box"] = box if box is not None else np.zeros(n, np.int64)
    if {Relion.ORIGIN_X_ANGST, Relion.ORIGIN_Y_ANGST} <= set(particles):
        origin = cv.origin_angstrom_to_px(particles[[Relion.ORIGIN_X_ANGST, Relion.ORIGIN_Y_ANGST]],
                                          pixel_size)
    elif {Relion.ORIGIN_X, Relion.ORIGIN_Y} <= set(particles):
        origin = particles[[Relion.ORIGIN_X, Relion.ORIGIN_Y]].to_numpy(np.float64)
    else:
        origin = np.zeros((n, 2))
    psi = particles[Relion.ANGLE_PSI].to_numpy(np.float64) if Relion.ANGLE_PSI in particles \
        else np.zeros(n)
    angle, shift = cv.from_relion_pose(psi, origin)
    p["angle"], p["shift_x"], p["shift_y"] = angle, shift[:, 0], shift[:, 1]
    p["class_index"] = (cv.from_base(particles[Relion.CLASS_NUMBER], cv.RELION_BASE)
                        if Relion.CLASS_NUMBER in particles else np.full(n, -1))
    p["class_posterior"] = _label(particles, Relion.MAX_VALUE_PROB, n)
    p["optics_group"] = group
    for _, label, column, _ in _CTF_FIELDS:
        source = lookup if label in _OPTICS_LABELS and label not in particles else particles
        p[column] = _label(source, label, n)
    premult = lookup.get(Relion.CTF_PREMULTIPLIED)
    p["ctf_premultiplied"] = (premult.fillna(0).to_numpy().astype(bool) if premult is not None
                              else False)
    p["helical_tube_id"] = (particles[Relion.HELICAL_TUBE_ID].to_numpy(np.int64)
                            if Relion.HELICAL_TUBE_ID in particles else np.full(n, -1))
    p["psi_prior"] = _label(particles, Relion.ANGLE_PSI_PRIOR, n)
    for label, column in ((Relion.MICROGRAPH_NAME, "micrograph"),
                          (Relion.COORDINATE_X, "coordinate_x"),
                          (Relion.COORDINATE_Y, "coordinate_y")):
        if label in particles:
            p[column] = particles[label].to_numpy()
    aligned = bool({Relion.ANGLE_PSI, Relion.ORIGIN_X, Relion.ORIGIN_X_ANGST} & set(particles))
    p = p.assign(**native_read.native_columns(particles, p))  # native.py writes them back
    return ParticleTable(p, "star", path, particles, optics, aligned)


def _label(table: pd.DataFrame, label: str, n: int) -> np.ndarray:
    """A float64 column of a STAR table, or NaN where it is absent."""
    return table[label].to_numpy(np.float64) if label in table else np.full(n, np.nan)


# ------------------------------------------------------------------------ checks made on reading
#: Labels csplugin reads as numbers; a value that is not one is named with its line.
_NUMERIC_LABELS = (
    Relion.ANGLE_ROT, Relion.ANGLE_TILT, Relion.ANGLE_PSI, Relion.ANGLE_PSI_PRIOR,
    Relion.ORIGIN_X, Relion.ORIGIN_Y, Relion.ORIGIN_X_ANGST, Relion.ORIGIN_Y_ANGST,
    Relion.CLASS_NUMBER, Relion.MAX_VALUE_PROB, Relion.OPTICS_GROUP, Relion.IMAGE_PIXEL_SIZE,
    Relion.IMAGE_SIZE, Relion.IMAGE_DIMENSIONALITY, Relion.CTF_PREMULTIPLIED,
    Relion.MAGNIFICATION, Relion.DETECTOR_PIXEL_SIZE, Relion.VOLTAGE,
    Relion.SPHERICAL_ABERRATION, Relion.AMPLITUDE_CONTRAST, Relion.DEFOCUS_U, Relion.DEFOCUS_V,
    Relion.DEFOCUS_ANGLE, Relion.PHASE_SHIFT, Relion.CTF_BFACTOR, Relion.CTF_SCALEFACTOR,
    Relion.HELICAL_TUBE_ID, Relion.COORDINATE_X, Relion.COORDINATE_Y,
)


def _read_particle_star(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None,
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
    particles, optics = particle_blocks(read_star(path), path)
    found = identify.identify_tables(path, particles, optics, outline)
    if found is not None:
        raise found
    block = identify.particle_block_name(outline)
    for name in ("optics", block):
        if name in outline.bad_row:
            line, values, text = outline.bad_row[name]
            raise InputError(path, f"line {line} has {values} values but data_{name} has "
                             f"{len(outline.blocks[name])} labels: {text!r}",
                             "fix or remove that line (the file is damaged or was edited by hand)")
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
                 Relion.IMAGE_DIMENSIONALITY, Relion.HELICAL_TUBE_ID)


def _single_optics_group(path: Path, particles: pd.DataFrame, optics: pd.DataFrame
                         ) -> pd.DataFrame:
    """Particles without ``rlnOpticsGroup`` beside a ``data_optics`` table, as RELION reads them.

    RELION 3.1 reads such a file with every particle in optics group 1. With one group that
    is exactly right, so the column is added; with several groups it is a guess RELION makes
    silently, so unless all groups describe the same optics, which group each particle
    belongs to is unknown and the file is refused.
    """
    if Relion.OPTICS_GROUP in particles:
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


def _known_optics_groups(path: Path, particles: pd.DataFrame, optics: pd.DataFrame,
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


def _check_values(table: ParticleTable) -> None:
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
    try:
        voxel = open_stack(stack).voxel_size
    except InputError:
        return f"its stack {name} cannot be read for a header pixel size"
    if np.isfinite(voxel) and voxel > 0:
        return f"the header of its stack {name} says {voxel:g} Å/px (not used without the field)"
    return f"the header of its stack {name} gives none either (voxel size {voxel:g})"


def _header_box(stack: str) -> int:
    """A stack's image width from its header; 0 when it cannot be read (the stack check that
    every job and ``csplugin info`` make says why)."""
    try:
        return open_stack(stack).box[1] if Path(stack).is_file() else 0
    except InputError:
        return 0
