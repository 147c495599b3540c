"""Metadata of many particles (no stacks): the same job as a cryoSPARC ``.cs`` and a RELION
3.1 ``.star``, for scale tests and benchmarks of reading, filtering and converting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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
        ("uid", "<u8"), ("blob/path", f"S{len(paths[0])}"), ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"), ("blob/sign", "<f4"),
        ("alignments2D/shift", "<f4", (2,)), ("alignments2D/pose", "<f4"),
        ("alignments2D/psize_A", "<f4"), ("alignments2D/class", "<u4"),
        ("alignments2D/class_posterior", "<f4"), ("ctf/exp_group_id", "<u4"),
        ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
        ("location/micrograph_path", "S32"), ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"), ("location/micrograph_shape", "<u4", (2,))])
    data["uid"] = rng.choice(2**62, n, replace=False)
    data["blob/path"], data["blob/idx"] = encode(paths), index
    data["blob/shape"], data["blob/psize_A"], data["blob/sign"] = 256, 1.1, -1.0
    data["alignments2D/shift"], data["alignments2D/pose"] = shifts, angles
    data["alignments2D/psize_A"], data["alignments2D/class"] = 1.1, classes
    data["alignments2D/class_posterior"] = rng.uniform(0.5, 1, n)
    data["ctf/exp_group_id"], data["ctf/accel_kv"], data["ctf/cs_mm"] = 1, 300.0, 2.7
    data["ctf/amp_contrast"] = 0.1
    data["ctf/df1_A"], data["ctf/df2_A"] = defocus + 200, defocus - 200
    data["ctf/df_angle_rad"] = rng.uniform(0, np.pi, n)
    data["location/micrograph_path"] = encode(np.char.replace(paths, "_particles", ""))
    data["location/center_x_frac"] = rng.uniform(0, 1, n)
    data["location/center_y_frac"] = rng.uniform(0, 1, n)
    data["location/micrograph_shape"] = 4096
    write_cs(cs_path, data)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnAmplitudeContrast": [0.1], "rlnSphericalAberration": [2.7],
                           "rlnVoltage": [300.0], "rlnImagePixelSize": [1.1],
                           "rlnImageSize": [256], "rlnImageDimensionality": [2]})
    particles = pd.DataFrame({
        "rlnImageName": join_image_names(index + 1, np.char.add(paths, "s")),
        "rlnMicrographName": data["location/micrograph_path"].astype(str),
        "rlnCoordinateX": data["location/center_x_frac"] * 4096.0,
        "rlnCoordinateY": data["location/center_y_frac"] * 4096.0,
        "rlnDefocusU": defocus + 200, "rlnDefocusV": defocus - 200,
        "rlnDefocusAngle": np.rad2deg(data["ctf/df_angle_rad"]),
        "rlnAnglePsi": np.rad2deg(angles.astype(float)),
        "rlnOriginXAngst": shifts[:, 0] * 1.1, "rlnOriginYAngst": shifts[:, 1] * 1.1,
        "rlnClassNumber": classes + 1, "rlnMaxValueProbDistribution": data[
            "alignments2D/class_posterior"], "rlnOpticsGroup": 1})
    write_star(star_path, {"optics": optics, "particles": particles})
    return cs_path, star_path
