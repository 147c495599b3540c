"""A summary of a particle file: what ``csplugin info`` prints."""

from __future__ import annotations

from typing import Any

import numpy as np

from csplugin.core.particles import ParticleTable


def describe(table: ParticleTable) -> dict[str, Any]:
    """Summarise a particle table.

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
        "has_alignments": bool((p["angle"] != 0).any() or (p[["shift_x", "shift_y"]] != 0).any().any()),
        "has_ctf": bool(p["defocus_u"].notna().any()),
        "has_helical": bool((p["helical_tube_id"] >= 0).any() or p["psi_prior"].notna().any()),
    }
