"""RELION ``.star`` particle files: read 3.0 / 3.1 / 5 layouts, write 3.1 layout.

Layouts
-------
RELION <= 3.0
    One table (``data_`` or e.g. ``data_images``); origins ``rlnOriginX/Y`` in pixels; pixel
    size ``10000 * rlnDetectorPixelSize / rlnMagnification`` Å.
RELION 3.1 and 5 (``# version 30001`` / ``50001``)
    ``data_optics`` (one row per optics group: ``rlnImagePixelSize``, ``rlnImageSize``,
    voltage, Cs, ...) and ``data_particles`` (``rlnOpticsGroup``, origins
    ``rlnOriginXAngst/YAngst`` in Å).

``rlnImageName`` is ``N@path`` with ``N`` 1-based and any number of digits (RELION <= 5.0.0
writes 6, 5.0.1 writes 8); this module writes 6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from formats.atomic import atomic_output
from formats.errors import InputError, brief

#: Written before every data block; RELION 3.1+ needs it to skip its 3.0 -> 3.1 conversion.
VERSION_LINE = "# version 30001"


def read_star(path: str | Path) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file.

    Returns
    -------
    dict
        Block name (without ``data_``; ``""`` for an anonymous block) -> table.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # noqa: BLE001 -- starfile/pandas raise many types on malformed text
        raise InputError(path, f"is not a readable STAR file ({brief(exc)})",
                         "check that it is a RELION particles .star file") from None
    tables = {name: block for name, block in blocks.items() if isinstance(block, pd.DataFrame)}
    if not tables:
        raise InputError(path, "has no loop tables", "pass a RELION particles .star file")
    return tables


def particle_blocks(blocks: dict[str, pd.DataFrame], path: str | Path
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Pick the particle table and, for RELION 3.1+, the optics table.

    Returns
    -------
    (particles, optics)
        ``optics`` is ``None`` for a RELION <= 3.0 file.
    """
    optics = blocks.get("optics")
    if "particles" in blocks:
        particles = blocks["particles"]
    else:
        candidates = [b for name, b in blocks.items() if name != "optics" and "rlnImageName" in b]
        if len(candidates) != 1:
            raise InputError(path, "has no unique particle table with rlnImageName",
                             "pass a RELION particles .star file (data_particles)")
        particles = candidates[0]
    if "rlnImageName" not in particles:
        raise InputError(path, "has no rlnImageName column", "pass a RELION particles .star file")
    return particles, optics


def split_image_names(names: pd.Series | np.ndarray, path: str | Path = "") -> tuple[np.ndarray,
                                                                                     np.ndarray]:
    """Split ``N@stack`` names into 1-based slice numbers and stack paths.

    Parameters
    ----------
    names
        ``(n,)`` strings like ``000012@Extract/job007/mic1.mrcs``. A name without ``@``
        is a single image: slice 1.
    path
        The STAR file, named in error messages.

    Returns
    -------
    (numbers, stacks)
        ``(n,)`` int64 1-based slice numbers and ``(n,)`` stack path strings.
    """
    names = np.asarray(names, dtype=str)
    if names.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, dtype=str)
    parts = np.char.partition(names, "@")
    has_at = parts[:, 1] == "@"
    numbers_text = np.where(has_at, parts[:, 0], "1")
    stacks = np.where(has_at, parts[:, 2], parts[:, 0])
    if not np.char.isdigit(numbers_text).all():
        bad = names[~np.char.isdigit(numbers_text)][0]
        raise InputError(path, f"has an rlnImageName that is not N@file: {bad!r}",
                         "fix the image names (N is the 1-based slice)")
    numbers = numbers_text.astype(np.int64)
    if (numbers < 1).any():
        raise InputError(path, "has an rlnImageName with slice 0; RELION slices are 1-based",
                         "number slices from 1")
    return numbers, stacks


def join_image_names(numbers: np.ndarray, stacks: np.ndarray) -> np.ndarray:
    """Compose ``(n,)`` 1-based slice numbers and stack paths into ``NNNNNN@stack`` names."""
    numbers = np.asarray(numbers, dtype=np.int64)
    return np.char.add(np.char.add(np.char.zfill(numbers.astype(str), 6), "@"),
                       np.asarray(stacks, dtype=str))


def write_star(path: str | Path, blocks: dict[str, pd.DataFrame]) -> None:
    """Write data blocks as a RELION 3.1 STAR file, atomically.

    Each block is preceded by ``# version 30001``; floats are written with 8 decimals so
    that float32 values (cryoSPARC's precision) survive a round trip exactly. Strings that
    contain a space (a path with a space, say) or are empty are written in double quotes,
    as RELION 3.1 itself writes and reads them.

    Raises
    ------
    InputError
        A string value holds a tab, a line break or a double quote, which no STAR reader
        can take back (names the block and the label).
    """
    for name, block in blocks.items():
        for label in block.columns:
            if not pd.api.types.is_numeric_dtype(block[label]):
                bad = block[label].map(lambda v: isinstance(v, str) and any(
                    c in v for c in '\t\n\r"'))
                if bad.any():
                    value = block[label][bad].iloc[0]
                    raise InputError(path, f"cannot hold {label} {value!r} of data_{name}: "
                                     "STAR values cannot contain tabs, line breaks or double "
                                     "quotes", "rename the file or directory it names")
    # starfile quotes strings with spaces; tab-separated so that csv accepts them, then the
    # tabs (no value holds one) become RELION's single spaces
    text = starfile.to_string(blocks, float_format="%.8f", sep="\t").replace("\t", " ")
    lines = [line for line in text.splitlines() if not line.startswith("# Created by")]
    out: list[str] = []
    for line in lines:
        if line.startswith("data_"):
            out += [VERSION_LINE, ""]
        out.append(line)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(out).strip() + "\n")
