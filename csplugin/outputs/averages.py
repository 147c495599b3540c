"""Class averages in native formats: ``class_averages.mrcs`` + ``.cs`` + ``.star`` + montage.

Outputs in OUTDIR
-----------------
``class_averages.mrcs``
    Slice ``i`` = ``i``-th class in ascending class number; voxel size = pixel size.
``class_averages.cs``
    cryoSPARC class-averages layout (``blob`` slot: ``uid``, ``blob/path`` =
    ``class_averages.mrcs`` relative to OUTDIR, ``blob/idx`` = slice, ``blob/shape``,
    ``blob/psize_A``), plus ``alignments2D/class`` (class in cryoSPARC numbering, 0-based)
    and ``alignments2D/num_particles``. ``uid`` = the 0-based class. cryoSPARC's own
    ``J##_class_averages.cs`` has no class field (its Select 2D takes ``blob/idx`` as the
    class), so that reading holds only when every class from 0 is written.
    ``blob/res_A`` is not written (no resolution is computed).
``class_averages.star``
    RELION ``data_model_classes``: ``rlnReferenceImage`` (``k@stack``, 1-based slice;
    the stack path follows export-aligned's rule: relative to the current directory when
    OUTDIR is below it, else absolute), ``rlnClassNumber`` (1-based RELION numbering),
    ``rlnClassDistribution`` (fraction of the averaged particles) and
    ``rlnClassParticleCount`` (particle count; RELION has no standard label for it, RELION
    3.1+ reads and keeps unknown labels).
``class_averages.png``
    Montage, each tile titled with the class number (input numbering) and particle count.
``compare.csv`` (with ``compare``)
    Pearson correlation, inside the inscribed disc, of each rebuilt average with slice
    ``class_index`` (0-based) of the given averages: cryoSPARC's ``J##_class_averages.mrc``
    (slice k = class k) and RELION's ``_classes.mrcs`` (slice k-1 = class k) alike.

Every output is written atomically; existing outputs are refused without ``overwrite`` and a
failed run leaves none of its files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from csplugin.core import conventions as cv
from csplugin.core.fields import Cs, Relion
from csplugin.outputs import figures
from csplugin.outputs.paths import relion_path
from formats.atomic import atomic_output
from formats.cs import encode, write_cs
from formats.mrc import write_stack
from formats.star import join_image_names, write_star

#: Label for the particle count in class_averages.star (RELION has none).
COUNT_LABEL = "rlnClassParticleCount"


def output_paths(outdir: Path) -> dict[str, Path]:
    """``{"mrcs", "cs", "star", "png"}`` -> ``outdir/class_averages.<suffix>``."""
    return {s: outdir / f"class_averages.{s}" for s in ("mrcs", "cs", "star", "png")}


def write_averages(names: dict[str, Path], averages: np.ndarray, class_index: np.ndarray,
                   counts: np.ndarray, class_base: int, pixel_size: float, *,
                   comparison: pd.DataFrame | None = None,
                   star_columns: dict[str, np.ndarray] | None = None,
                   cs_fields: dict[str, np.ndarray] | None = None,
                   montage_limit: int | None = None,
                   draw: Callable[..., None] | None = None) -> None:
    """Write the outputs listed in the module docstring, all or none.

    Parameters
    ----------
    names
        :func:`output_paths` of the output directory.
    averages
        ``(k, N, N)`` images; slice ``i`` describes class ``class_index[i]`` (0-based).
    counts
        ``(k,)`` particles per average.
    class_base
        The input's class numbering (0 cryoSPARC, 1 RELION), for the montage titles.
    comparison
        Written to ``compare.csv`` beside the averages when given.
    star_columns, cs_fields
        Extra ``(k,)`` columns for ``class_averages.star`` (label -> values) and
        ``class_averages.cs`` (field -> values).
    montage_limit
        At most this many tiles in the PNG montage (default: all).
    draw
        Draws the montage (a :class:`csplugin.outputs.figure_process.FigureProcess`, whose
        ``close`` then raises a drawing error); default: here, now.
    """
    box = averages.shape[-1]
    numbers = cv.to_base(class_index, class_base)
    shown = slice(None, montage_limit)
    written: list[Path] = []
    try:
        write_stack(names["mrcs"], averages, pixel_size)
        written.append(names["mrcs"])
        write_cs(names["cs"], _averages_cs(names["mrcs"].name, class_index, counts, box,
                                           pixel_size, cs_fields or {}))
        written.append(names["cs"])
        star = _averages_star(relion_path(names["mrcs"]), class_index, counts)
        for label, values in (star_columns or {}).items():
            star[label] = values
        write_star(names["star"], {"model_classes": star})
        written.append(names["star"])
        labels = [f"class {c}\n{n:,} ptcls" for c, n in zip(numbers[shown], counts[shown])]
        if draw is None:
            figures.montage_png(names["png"], averages[shown], labels)
        else:
            draw(figures.montage_png, names["png"], averages[shown], labels)
        written.append(names["png"])
        if comparison is not None:
            with atomic_output(names["mrcs"].parent / "compare.csv") as tmp:
                comparison.to_csv(tmp, index=False, float_format="%.6f")
    except BaseException:
        for path in written:  # no partial outputs
            path.unlink(missing_ok=True)
        raise


def _averages_cs(stack_name: str, class_index: np.ndarray, counts: np.ndarray, box: int,
                 pixel_size: float, extra: dict[str, np.ndarray]) -> np.ndarray:
    k = len(class_index)
    data = np.zeros(k, dtype=[
        ("uid", "<u8"), (Cs.BLOB_PATH, f"S{len(stack_name.encode())}"), (Cs.BLOB_IDX, "<u4"),
        (Cs.BLOB_SHAPE, "<u4", (2,)), (Cs.BLOB_PSIZE, "<f4"), (Cs.A2D_CLASS, "<u4"),
        (Cs.A2D_NUM_PARTICLES, "<u4"),
        *((name, np.asarray(values).dtype) for name, values in extra.items())])
    for name, values in extra.items():
        data[name] = values
    data["uid"] = class_index
    data[Cs.BLOB_PATH] = encode([stack_name] * k)
    data[Cs.BLOB_IDX] = np.arange(k)
    data[Cs.BLOB_SHAPE] = box
    data[Cs.BLOB_PSIZE] = pixel_size
    data[Cs.A2D_CLASS] = cv.to_base(class_index, cv.CRYOSPARC_BASE)
    data[Cs.A2D_NUM_PARTICLES] = counts
    return data


def _averages_star(stack_path: str, class_index: np.ndarray, counts: np.ndarray
                   ) -> pd.DataFrame:
    k = len(class_index)
    return pd.DataFrame({
        Relion.REFERENCE_IMAGE: join_image_names(cv.to_base(np.arange(k), cv.RELION_BASE),
                                              np.array([stack_path] * k)),
        Relion.CLASS_NUMBER: cv.to_base(class_index, cv.RELION_BASE),
        Relion.CLASS_DISTRIBUTION: counts / counts.sum(),
        COUNT_LABEL: counts,
    })
