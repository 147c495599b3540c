"""Recognise files that are not 2D single-particle files, before anything else is read.

csplugin applies in-plane (2D) alignments to 2D particle images. Other files that end in
``.star``, ``.cs`` or ``.mrc(s)`` are common in the same projects: RELION 4/5 subtomogram
particles, Warp/M particle series, tomograms and tilt-series tables, job, pipeline, model,
optimiser, sampling, postprocess and MTF files, micrograph and coordinate lists, cryoSPARC
exposure datasets, and Git LFS pointers left by a clone without ``git lfs pull``. Reading one
of them as particles gives wrong results (a 3D Euler psi taken as an in-plane angle, z-section
1 of a subtomogram taken as the particle), so each is refused in one line **before its stacks
are looked for**, naming what it is.

:func:`star_outline` scans a STAR file's structure (block names, labels, the key-value pairs
of non-loop blocks, the line of each loop's first row) without parsing the rows;
:func:`identify_star` and :func:`identify_tables` turn an outline or the parsed tables into a
:class:`NotParticles` error. The label names below are used only to recognise such files;
the labels csplugin reads and writes are in :mod:`csplugin.core.fields`.

``csplugin info`` catches :class:`NotParticles` and describes the file instead of printing
one line; it still exits with status 2, because csplugin cannot process the file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from csplugin.core.fields import Cs, Relion
from formats import InputError

#: First bytes of a Git LFS pointer (https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md).
LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"

#: What every refusal of a tomography file says csplugin does.
SCOPE = "csplugin handles 2D single-particle images only"
_TOMO_FIX = "use RELION's tomography programs or Warp/M for it"
_OTHER_FIX = "pass a particles .star (e.g. Class2D run_itNNN_data.star) or a particles .cs"

_TOMO_2D_STACKS = Relion.TOMO_SUBTOMOS_ARE_2D_STACKS
_TOMO_PREFIX = Relion.TOMO_PREFIX
#: A third coordinate or origin: subtomograms. (``rlnCtfImage`` alone is not: RELION's
#: single-particle Extract copies the micrograph's CTF image name into every particle row.)
_TOMO_3D_LABELS = (Relion.COORDINATE_Z, Relion.ORIGIN_Z_ANGST, Relion.ORIGIN_Z,
                   Relion.CENTERED_COORDINATE_Z_ANGST)
_WARP_GROUP = re.compile(r"_\d{7}$")


class NotParticles(InputError):
    """The input is a recognisable file that is not a 2D single-particle file.

    Attributes
    ----------
    what
        What the file is, e.g. ``"RELION 5 subtomogram particles (rlnTomoName, ...)"``.
    tomography
        Whether it belongs to tomography / subtomogram averaging.
    details
        Lines ``csplugin info`` prints about it (blocks, rows, telling labels).
    """

    def __init__(self, path: str | Path | None, what: str, tomography: bool = False,
                 details: tuple[str, ...] = (), fix: str = "", why: str = "") -> None:
        self.what, self.tomography, self.details = what, tomography, tuple(details)
        self.advice, self.why = fix, why or (SCOPE if tomography else "not a particle file")
        if tomography or why:
            super().__init__(path, f"is {what}; {self.why}", fix or _TOMO_FIX)
        else:
            super().__init__(path, f"is {what}, {self.why}", fix or _OTHER_FIX)

    def __reduce__(self) -> tuple[type, tuple]:  # type: ignore[override]
        return type(self), (self.path, self.what, self.tomography, self.details, self.advice,
                            self.why)


@dataclass
class StarOutline:
    """The structure of a STAR file, read without parsing its rows.

    Attributes
    ----------
    blocks
        Block name (without ``data_``) -> labels (without ``_``) in order.
    pairs
        Block name -> ``{label: value}`` of a non-loop block.
    first_row_line
        Block name -> 1-based line number of a loop's first row.
    rows
        Block name -> number of rows of a loop.
    bad_row
        Block name -> ``(line, values, text)`` of the first loop row whose number of values
        differs from the number of labels (a damaged or hand-edited line).
    """

    blocks: dict[str, list[str]] = field(default_factory=dict)
    pairs: dict[str, dict[str, str]] = field(default_factory=dict)
    first_row_line: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    bad_row: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def labels(self) -> set[str]:
        """Every label of every block."""
        return {label for labels in self.blocks.values() for label in labels}

    def summary(self) -> tuple[str, ...]:
        """One line per block: ``data_NAME: N rows, labels a, b, c ...``."""
        lines = []
        for name, labels in self.blocks.items():
            rows = f"{self.rows[name]} rows" if name in self.rows else "key-value block"
            more = f" (+{len(labels) - 6} more)" if len(labels) > 6 else ""
            shown = ", ".join(labels[:6]) + more
            lines.append(f"data_{name}: {rows}; {shown}")
        return tuple(lines)


def refuse_lfs_pointer(path: str | Path) -> None:
    """Raise :class:`NotParticles` if ``path`` is a Git LFS pointer instead of its content."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return  # the reader that follows says what is wrong with the path
    if head.startswith(LFS_MAGIC):
        size = re.search(rb"^size (\d+)", head, re.M)
        content = f"its {int(size.group(1)):,} bytes" if size else "its content"
        raise NotParticles(path, "a Git LFS pointer", why=f"{content} were never downloaded",
                           details=tuple(head.decode("ascii", "replace").splitlines()[:3]),
                           fix="run `git lfs pull` in the repository it came from")


def refuse_image_file(path: str | Path) -> None:
    """Raise :class:`NotParticles` for an MRC file given where particle metadata belongs."""
    path = Path(path)
    if path.suffix.lower() not in (".mrc", ".mrcs", ".st", ".map") or not path.is_file():
        return
    from formats.mrc import open_stack  # noqa: PLC0415 -- only for this message

    try:
        stack = open_stack(path)
    except InputError:
        what = "an MRC file"
    else:  # the header cannot tell a stack from a volume (ispg is 0 in both in practice)
        size = f"{stack.n} sections of {stack.box[1]}x{stack.box[0]} px"
        what = (f"an MRC image stack ({size})" if path.suffix.lower() == ".mrcs" else
                f"an MRC file ({size}: an image stack or a 3D volume)")
    raise NotParticles(path, what, fix="pass the .star or .cs that lists its particles and "
                       "their alignments")


def star_outline(path: str | Path) -> StarOutline:
    """Scan a STAR file's blocks and labels (rows are counted, not parsed)."""
    outline = StarOutline()
    block: str | None = None
    in_loop = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("data_"):
                block, in_loop = line[5:].split()[0] if len(line) > 5 else "", False
                outline.blocks.setdefault(block, [])
                continue
            if block is None:
                continue
            if line.startswith("loop_"):
                in_loop = True
                outline.rows[block] = 0
                continue
            if line.startswith("_"):
                label, _, value = line[1:].partition(" ")
                label = label.split("\t")[0]
                if in_loop and outline.rows.get(block, 0) == 0:
                    outline.blocks[block].append(label)
                elif not in_loop:
                    outline.blocks[block].append(label)
                    outline.pairs.setdefault(block, {})[label] = value.split("#")[0].strip()
                continue
            if in_loop:
                if outline.rows[block] == 0:
                    outline.first_row_line[block] = number
                outline.rows[block] += 1
                if block not in outline.bad_row:
                    values = _count_values(line)
                    if values != len(outline.blocks[block]):
                        outline.bad_row[block] = (number, values, line[:80])
    return outline


def _count_values(line: str) -> int:
    """Values on a loop row (quoted values count once); -1 for an unbalanced quote."""
    if '"' not in line and "'" not in line:
        return len(line.split())
    try:
        return len(shlex.split(line, posix=True))
    except ValueError:  # no closing quotation
        return -1


def identify_star(path: str | Path, outline: StarOutline) -> NotParticles | None:
    """What a STAR file is when its structure shows it holds no 2D particles, else ``None``."""
    blocks = outline.blocks
    labels = outline.labels()
    details = outline.summary()
    tomo = sorted(label for label in labels if label.startswith(_TOMO_PREFIX))

    def refuse(what: str, tomography: bool = False, fix: str = "") -> NotParticles:
        return NotParticles(path, what, tomography, details, fix)

    general = outline.pairs.get("general", {})
    if _TOMO_2D_STACKS in general or _TOMO_2D_STACKS in blocks.get("general", []):
        flag = general.get(_TOMO_2D_STACKS, "")
        kind = "2D stacks of tilt images" if flag == "1" else "3D subtomograms"
        return refuse(f"RELION 5 subtomogram particles (data_general {_TOMO_2D_STACKS} {flag}: "
                      f"{kind})", True)
    if Relion.TOMO_PARTICLES_FILE in labels:
        return refuse("a RELION tomography optimisation set (rlnTomoParticlesFile)", True)
    if Relion.TOMO_TILT_SERIES_STAR_FILE in labels or \
            "global" in blocks and Relion.TOMO_NAME in labels:
        return refuse("a RELION tomograms table (tomograms.star: rlnTomoName, "
                      "rlnTomoTiltSeriesStarFile)", True)
    if {Relion.TOMO_NOMINAL_STAGE_TILT_ANGLE, Relion.TOMO_X_TILT, Relion.TOMO_Y_TILT} & labels or \
            Relion.MICROGRAPH_MOVIE_NAME in labels and Relion.IMAGE_NAME not in labels and tomo:
        telling = {Relion.TOMO_NOMINAL_STAGE_TILT_ANGLE, Relion.MICROGRAPH_MOVIE_NAME} & labels
        return refuse(f"a RELION tilt-series table (one row per tilt image: "
                      f"{', '.join(sorted(telling))})", True)
    if "job" in blocks or "joboptions_values" in blocks:
        job = outline.pairs.get("job", {})
        kind = job.get(Relion.JOB_TYPE_LABEL) or job.get(Relion.JOB_TYPE) or "?"
        return refuse(f"a RELION job.star (parameters of a {kind} job)")
    if any(name.startswith("pipeline_") for name in blocks):
        return refuse("a RELION pipeline (default_pipeline.star: jobs and their nodes)")
    if "optimiser_general" in blocks:
        data = outline.pairs.get("optimiser_general", {}).get(Relion.EXPERIMENTAL_DATA_STAR_FILE)
        return refuse("a RELION optimiser file (run_itNNN_optimiser.star)",
                      fix=f"pass the particles it names: {data}" if data else
                      "pass the run_itNNN_data.star of the same iteration")
    if "sampling_general" in blocks:
        return refuse("a RELION sampling file (run_itNNN_sampling.star)")
    if "model_general" in blocks or "model_classes" in blocks:
        return refuse("a RELION model file (class references and statistics, "
                      "run_itNNN_model.star)",
                      fix="pass the run_itNNN_data.star of the same iteration")
    if Relion.FINAL_RESOLUTION in labels or "fsc" in blocks:
        return refuse("a RELION post-processing file (resolution and FSC curves)")
    if Relion.MTF_VALUE in labels:
        return refuse("a detector MTF table (rlnResolutionInversePixel, rlnMtfValue)")
    if "motl_idx" in labels:
        return refuse("a STOPGAP motive list (subtomogram averaging)", True)
    if tomo and Relion.IMAGE_NAME not in labels:
        return refuse(f"a table of particle positions in tomograms ({', '.join(tomo[:3])}; no "
                      "extracted images)", True)
    if tomo and (Relion.TOMO_NAME in labels or Relion.TOMO_PARTICLE_NAME in labels):
        shown = ", ".join(tomo[:3]) + ("…" if len(tomo) > 3 else "")
        return refuse(f"RELION 4/5 subtomogram particles ({shown})", True)
    if Relion.IMAGE_NAME not in labels:
        if Relion.MICROGRAPH_SHIFT_X in labels or Relion.MOTION_MODEL_VERSION in labels:
            return refuse("a RELION motion-correction file of one movie (frame shifts)")
        if Relion.MICROGRAPH_COORDINATES in labels:
            return refuse("a list of coordinate files, one per micrograph (autopick.star)")
        if Relion.COORDINATE_Z in labels:
            return refuse("a table of 3D particle coordinates in tomograms (rlnCoordinateZ, no "
                          "rlnImageName)", True)
        if "micrographs" in blocks or "movies" in blocks or \
                Relion.MICROGRAPH_NAME in labels and Relion.COORDINATE_X not in labels:
            return refuse("a list of micrographs or movies (no rlnImageName)")
        if Relion.COORDINATE_X in labels:
            return refuse("a table of picked coordinates (rlnCoordinateX/Y, no extracted "
                          "images: no rlnImageName); extract the particles first")
        if Relion.REFERENCE_IMAGE in labels:
            return refuse("a table of references or class averages (rlnReferenceImage)")
    three_d = sorted(set(_TOMO_3D_LABELS) & labels)
    if Relion.IMAGE_NAME in labels and three_d:
        shown = three_d + ([Relion.CTF_IMAGE] if Relion.CTF_IMAGE in labels else [])
        return refuse(f"subtomogram particles ({', '.join(sorted(shown))}: 3D positions and "
                      "poses)", True)
    return None


def identify_cs(path: str | Path, fields: set[str]) -> NotParticles | None:
    """What a cryoSPARC dataset is when its fields show it holds no particle images, else None."""
    telling = sorted(f for f in fields if f == Cs.A2D_NUM_PARTICLES
                     or f.startswith("blob_selected/"))
    if telling:
        return NotParticles(path, "a cryoSPARC class-averages (templates) dataset "
                            f"({', '.join(telling[:2])})",
                            fix="pass the particles .cs of the 2D classification")
    if Cs.BLOB_PATH in fields:
        return None
    slots = sorted({f.split("/")[0] for f in fields if "/" in f})
    if any(s in slots for s in ("micrograph_blob", "movie_blob", "micrograph_blob_non_dw")):
        return NotParticles(path, f"a cryoSPARC exposures dataset ({', '.join(slots[:4])})",
                            fix="pass the particles .cs of an Extract or 2D classification job")
    if "location" in slots or any(s.startswith("alignments") for s in slots):
        return NotParticles(path, "cryoSPARC particle metadata without images (slots "
                            f"{', '.join(slots[:4])}{'…' if len(slots) > 4 else ''})",
                            why="no blob/* slot, so no particle image to read",
                            fix="pass the particles .cs of an Extract or 2D classification job, "
                            "or add its passthrough (--passthrough)")
    return None


def identify_tables(path: str | Path, particles: pd.DataFrame, optics: pd.DataFrame | None,
                    outline: StarOutline | None = None) -> NotParticles | None:
    """What a STAR file is when its particle and optics values show 3D or tilt data, else None.

    * ``rlnImageDimensionality 3`` in the optics or particle table: subtomograms.
    * Warp/M particle series: rows grouped by ``rlnGroupName`` (Warp names it
      ``<tomogram>_NNNNNNN``), each group one particle seen in several tilt images (distinct
      ``rlnMicrographName`` per row, varying ``rlnCtfScalefactor`` = cos(tilt)).
    """
    details = outline.summary() if outline is not None else ()
    for name, table in (("data_optics", optics), ("data_particles", particles)):
        if table is not None and Relion.IMAGE_DIMENSIONALITY in table:
            dims = pd.to_numeric(table[Relion.IMAGE_DIMENSIONALITY], errors="coerce")
            if (dims == 3).any():
                return NotParticles(path, f"subtomogram particles ({Relion.IMAGE_DIMENSIONALITY} 3 "
                                    f"in {name}: 3D images)", True, details)
    group, mic, scale = Relion.SCALE_GROUP_NAME, Relion.MICROGRAPH_NAME, Relion.CTF_SCALEFACTOR
    if {group, mic, scale} <= set(particles) and len(particles) > 1:
        names = particles[group].astype(str)
        sizes = names.value_counts()
        if sizes.max() > 1 and names.str.contains(_WARP_GROUP).all():
            grouped = particles.groupby(names)
            distinct = (grouped[mic].nunique() == sizes.loc[grouped[mic].nunique().index])
            varying = grouped[scale].nunique() > 1
            multi = sizes[sizes > 1].index
            if distinct.loc[multi].all() and varying.loc[multi].any():
                return NotParticles(
                    path, f"a Warp/M particle series ({len(sizes)} particles, each seen in up to "
                    f"{int(sizes.max())} tilt images: {group} per particle, one {mic} per tilt)",
                    True, details)
    return None


def star_row_line(outline: StarOutline | None, block: str, row: int) -> int | None:
    """1-based line of ``row`` (0-based) of a loop, assuming one row per line, else None."""
    if outline is None or block not in outline.first_row_line:
        return None
    return outline.first_row_line[block] + row


def particle_block_name(outline: StarOutline) -> str:
    """The name of the block :func:`formats.star.particle_blocks` picks (best effort)."""
    if "particles" in outline.blocks:
        return "particles"
    for name, labels in outline.blocks.items():
        if name != "optics" and Relion.IMAGE_NAME in labels:
            return name
    return next(iter(outline.blocks), "")


def finite_or_refuse(path: str | Path, values: np.ndarray, what: str,
                     where: Callable[[int], str]) -> None:
    """Raise :class:`InputError` naming the first non-finite entry of ``values``.

    Parameters
    ----------
    values
        ``(n,)`` or ``(n, k)`` floats, one row per particle.
    what
        The field, e.g. ``"alignments2D/shift"``.
    where
        Row -> its description, e.g. ``"particle 12 (uid 4411...)"``.
    """
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.ndim > 1:
        bad = bad.any(axis=tuple(range(1, bad.ndim)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        more = f" and {int(bad.sum()) - 1} more" if bad.sum() > 1 else ""
        shown = values[i].tolist() if values.ndim > 1 else float(values[i])
        raise InputError(path, f"{where(i)}{more}: {what} is {shown}, not a finite number",
                         "fix or remove those particles")
