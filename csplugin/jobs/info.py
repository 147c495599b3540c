"""A summary of a particle file: what ``csplugin info`` prints, and its pre-flight check.

:func:`inspect` is the pre-flight check: it reads the file as every job does (so a file any
job would refuse is refused here for the same reason), then opens every referenced stack with
the jobs' header and size checks and checks every index (:func:`csplugin.core.images.audit_stacks`).
Its ``ok`` is true only when a job could read every image; ``csplugin info`` exits with status
2 otherwise, so scripts can run it first. A recognisable file that is not a 2D particle file
(tomography, job, model, MTF files, ...) is described rather than refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from csplugin.core.identify import NotParticles
from csplugin.core.images import audit_stacks
from csplugin.core.particles import ParticleTable, open_particles


def inspect(path: str | Path, passthrough: str | Path | None = None,
            project_dir: str | Path | None = None) -> dict[str, Any]:
    """Read a particle file and check every stack and index it references.

    Returns
    -------
    dict
        :func:`describe`'s summary, or for a file that is not a 2D particle file
        ``{"file", "format": "not 2D particles", "what", "tomography", "details", "why",
        "reason", "advice", "ok": False}``.

    Raises
    ------
    InputError
        The file cannot be read as particles for another reason (the jobs' message).
    """
    try:
        table = open_particles(path, passthrough, project_dir)
    except NotParticles as exc:
        return {"file": str(path), "format": "not 2D particles", "what": exc.what,
                "tomography": exc.tomography, "details": list(exc.details),
                "why": exc.why, "reason": str(exc), "advice": exc.fix, "ok": False}
    return describe(table, check_stacks=True)


def describe(table: ParticleTable, check_stacks: bool = False) -> dict[str, Any]:
    """Summarise a particle table.

    With ``check_stacks``, every referenced stack is opened and checked, and
    ``stack_problems`` lists what is wrong (missing, unreadable, index past end, box
    mismatch; each ``{"stack", "kind", "message", "particles"}``) and ``ok`` says whether
    there is nothing.

    Returns
    -------
    dict
        ``particles``, ``classes`` (class number in the input's numbering -> count),
        ``class_numbering``, ``pixel_sizes``, ``boxes``, ``optics_groups`` (group -> count),
        ``stacks`` / ``missing_stacks`` (counts and the missing paths), ``field_groups``.
    """
    p = table.particles
    classes: dict[int, int] = {}
    if (p["class_index"] >= 0).any():
        numbers, counts = np.unique(table.class_numbers(), return_counts=True)
        classes = {int(k): int(c) for k, c in zip(numbers, counts)}
    groups, group_counts = np.unique(p["optics_group"].to_numpy(), return_counts=True)
    if table.kind == "cs":
        native_groups = sorted({name.split("/")[0] for name in table.native.dtype.names})
    else:
        native_groups = ["particles"] + (["optics"] if table.optics is not None else [])
    return {
        "file": str(table.source),
        "format": "cryoSPARC .cs" if table.kind == "cs" else "RELION .star",
        "particles": len(p),
        "class_numbering": "0-based (cryoSPARC)" if table.class_base == 0 else "1-based (RELION)",
        "classes": classes,
        "pixel_sizes": sorted(float(x) for x in np.unique(np.round(p["pixel_size"], 5))),
        "boxes": sorted(int(x) for x in np.unique(p["box"])),
        "optics_groups": {int(g): int(c) for g, c in zip(groups, group_counts)},
        "stacks": int(p["stack"].nunique()),
        "missing_stacks": table.missing_stacks(),
        "field_groups": native_groups,
        "has_alignments": bool((p["angle"] != 0).any()
                               or (p[["shift_x", "shift_y"]] != 0).any().any()),
        "has_ctf": bool(p["defocus_u"].notna().any()),
        # helical = tube ids or cryoSPARC filament fields; a psi prior alone is not helical
        "has_helical": bool((p["helical_tube_id"] >= 0).any()
                            or (table.kind == "cs" and p["psi_prior"].notna().any())),
    } | (_stack_report(table) if check_stacks else {})


def _stack_report(table: ParticleTable) -> dict[str, Any]:
    problems = [vars(problem) for problem in audit_stacks(table)]
    if len(table) == 0:
        problems.append({"stack": "", "kind": "no particles", "particles": 0,
                         "message": "the file holds no particles"})
    return {"stack_problems": problems, "ok": not problems}
