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
from csplugin.core import identify, native_read, read_checks
from csplugin.core.fields import CTF_FIELDS as _CTF_FIELDS
from csplugin.core.fields import GROUP_NAME as _GROUP_NAME
from csplugin.core.fields import OPTICS_LABELS as _OPTICS_LABELS
from csplugin.core.fields import Cs, Relion
from csplugin.core.images import ParticleImages
from formats import InputError
from formats.cs import decode, find_passthrough, merge_passthrough, read_cs
from formats.star import split_image_names

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

    def alignments(self) -> tuple[np.ndarray, np.ndarray]:
        """In-plane angles ``(n,)`` (radians) and shifts ``(n, 2)`` (pixels, ``[:, 0]`` = x)
        as float64 arrays, for :func:`csplugin.engines.transform.align_images`."""
        p = self.particles
        return (p["angle"].to_numpy(np.float64),
                p[["shift_x", "shift_y"]].to_numpy(np.float64))

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
        with np.errstate(divide="ignore", invalid="ignore"):  # bad pixel sizes: read_checks
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
    read_checks.check_values(table)
    if (p["box"] == 0).any():  # RELION 3.0 files give no box size: read the stack headers
        boxes = {s: read_checks.header_box(s) for s in p["stack"].unique()}
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
    p["image_path"] = np.char.lstrip(_text(data, Cs.BLOB_PATH, path), ">") if n else []
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


def _text(data: np.ndarray, field: str, path: Path | None) -> np.ndarray:
    """A text field decoded from UTF-8; a damaged value names its row (or, with ``path``
    None, becomes ``""``: only informational fields)."""
    try:
        return decode(data[field])
    except UnicodeDecodeError:
        values = data[field]
        ok = np.array([_is_utf8(v) for v in values])
        if path is None:
            return np.where(ok, [v.decode("utf-8") if k else "" for v, k in zip(values, ok)], "")
        i = int(np.flatnonzero(~ok)[0])
        raise InputError(path, f"row {i} (uid {data['uid'][i]}): {field} is not UTF-8 text "
                         f"({bytes(values[i])[:40]!r})", "the file is damaged; export it again"
                         ) from None


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _add_location_from_cs(p: pd.DataFrame, data: np.ndarray) -> None:
    names = data.dtype.names
    if Cs.LOC_MICROGRAPH_PATH in names:
        p["micrograph"] = _text(data, Cs.LOC_MICROGRAPH_PATH, None)
    if {Cs.LOC_CENTER_X, Cs.LOC_MICROGRAPH_SHAPE} <= set(names):
        shape = data[Cs.LOC_MICROGRAPH_SHAPE].astype(np.float64)  # [ny, nx]
        p["coordinate_x"] = data[Cs.LOC_CENTER_X] * shape[:, 1]
        p["coordinate_y"] = data[Cs.LOC_CENTER_Y] * shape[:, 0]


def _from_star(path: Path) -> ParticleTable:
    particles, optics, outline = read_checks.read_particle_star(path)
    native_read.check_alignments(particles.columns, path)
    particles = particles.reset_index(drop=True)
    n = len(particles)
    if optics is not None:
        particles = read_checks.single_optics_group(path, particles, optics)
        merged = particles[[Relion.OPTICS_GROUP]].merge(optics, on=Relion.OPTICS_GROUP, how="left")
        read_checks.known_optics_groups(path, particles, optics, outline)
        pixel_size = _label(merged, Relion.IMAGE_PIXEL_SIZE, n)  # read_checks.check_values
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
        else:  # no pixel size: read_checks.check_values says so, with what the stack header gives
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
