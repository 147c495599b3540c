"""Metadata of many particles (no stacks): the same job as a cryoSPARC ``.cs`` and a RELION
3.1 ``.star``, for scale tests and benchmarks of reading, filtering and converting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from csplugin.core.fields import Cs, Relion
from formats.cs import encode, write_cs
from formats.star import join_image_names, write_star

PER_STACK = 500


def make_metadata(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``n`` particles' metadata as ``.cs`` and ``.star`` (stacks absent); reuse them."""
    root.mkdir(parents=True, exist_ok=True)
    cs_path, star_path = root / f"meta_{n}.cs", root / f"meta_{n}.star"
    if cs_path.is_file() and star_path.is_file():
        return cs_path, star_path
    rng = np.random.default_rng(seed)
    stack = np.arange(n) // PER_STACK
    paths = np.char.add(np.char.add("J2/extract/mic", np.char.zfill(stack.astype(str), 6)),
                        "_particles.mrc")
    index = np.arange(n) % PER_STACK
    classes = rng.integers(0, 3, n)
    angles = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    shifts = rng.uniform(-6, 6, (n, 2)).astype(np.float32)
    defocus = rng.uniform(8000, 25000, n).astype(np.float32)
    data = np.zeros(n, dtype=[
        ("uid", "<u8"), (Cs.BLOB_PATH, f"S{len(paths[0])}"), (Cs.BLOB_IDX, "<u4"),
        (Cs.BLOB_SHAPE, "<u4", (2,)), (Cs.BLOB_PSIZE, "<f4"), (Cs.BLOB_SIGN, "<f4"),
        (Cs.A2D_SHIFT, "<f4", (2,)), (Cs.A2D_POSE, "<f4"),
        (Cs.A2D_PSIZE, "<f4"), (Cs.A2D_CLASS, "<u4"),
        (Cs.A2D_CLASS_POSTERIOR, "<f4"), (Cs.CTF_EXP_GROUP, "<u4"),
        (Cs.CTF_ACCEL_KV, "<f4"), (Cs.CTF_CS_MM, "<f4"), (Cs.CTF_AMP_CONTRAST, "<f4"),
        (Cs.CTF_DF1, "<f4"), (Cs.CTF_DF2, "<f4"), (Cs.CTF_DF_ANGLE, "<f4"),
        (Cs.LOC_MICROGRAPH_PATH, "S32"), (Cs.LOC_CENTER_X, "<f4"),
        (Cs.LOC_CENTER_Y, "<f4"), (Cs.LOC_MICROGRAPH_SHAPE, "<u4", (2,))])
    data["uid"] = rng.choice(2**62, n, replace=False)
    data[Cs.BLOB_PATH], data[Cs.BLOB_IDX] = encode(paths), index
    data[Cs.BLOB_SHAPE], data[Cs.BLOB_PSIZE], data[Cs.BLOB_SIGN] = 256, 1.1, -1.0
    data[Cs.A2D_SHIFT], data[Cs.A2D_POSE] = shifts, angles
    data[Cs.A2D_PSIZE], data[Cs.A2D_CLASS] = 1.1, classes
    data[Cs.A2D_CLASS_POSTERIOR] = rng.uniform(0.5, 1, n)
    data[Cs.CTF_EXP_GROUP], data[Cs.CTF_ACCEL_KV], data[Cs.CTF_CS_MM] = 1, 300.0, 2.7
    data[Cs.CTF_AMP_CONTRAST] = 0.1
    data[Cs.CTF_DF1], data[Cs.CTF_DF2] = defocus + 200, defocus - 200
    data[Cs.CTF_DF_ANGLE] = rng.uniform(0, np.pi, n)
    data[Cs.LOC_MICROGRAPH_PATH] = encode(np.char.replace(paths, "_particles", ""))
    data[Cs.LOC_CENTER_X] = rng.uniform(0, 1, n)
    data[Cs.LOC_CENTER_Y] = rng.uniform(0, 1, n)
    data[Cs.LOC_MICROGRAPH_SHAPE] = 4096
    write_cs(cs_path, data)
    optics = pd.DataFrame({Relion.OPTICS_GROUP: [1], Relion.OPTICS_GROUP_NAME: ["opticsGroup1"],
                           Relion.AMPLITUDE_CONTRAST: [0.1], Relion.SPHERICAL_ABERRATION: [2.7],
                           Relion.VOLTAGE: [300.0], Relion.IMAGE_PIXEL_SIZE: [1.1],
                           Relion.IMAGE_SIZE: [256], Relion.IMAGE_DIMENSIONALITY: [2]})
    particles = pd.DataFrame({
        Relion.IMAGE_NAME: join_image_names(index + 1, np.char.add(paths, "s")),
        Relion.MICROGRAPH_NAME: data[Cs.LOC_MICROGRAPH_PATH].astype(str),
        Relion.COORDINATE_X: data[Cs.LOC_CENTER_X] * 4096.0,
        Relion.COORDINATE_Y: data[Cs.LOC_CENTER_Y] * 4096.0,
        Relion.DEFOCUS_U: defocus + 200, Relion.DEFOCUS_V: defocus - 200,
        Relion.DEFOCUS_ANGLE: np.rad2deg(data[Cs.CTF_DF_ANGLE]),
        Relion.ANGLE_PSI: np.rad2deg(angles.astype(float)),
        Relion.ORIGIN_X_ANGST: shifts[:, 0] * 1.1, Relion.ORIGIN_Y_ANGST: shifts[:, 1] * 1.1,
        Relion.CLASS_NUMBER: classes + 1, Relion.MAX_VALUE_PROB: data[
            Cs.A2D_CLASS_POSTERIOR], Relion.OPTICS_GROUP: 1})
    write_star(star_path, {"optics": optics, "particles": particles})
    return cs_path, star_path
