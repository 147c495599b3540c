"""Shared helpers for the benchmark scripts: a large synthetic data set and timed runs.

The data set is noise images (content does not change the cost) in stacks of 500, with a
cryoSPARC ``.cs`` and a RELION 3.1 ``.star`` (absolute paths, so RELION's relative-path
memory leak does not distort its figures) carrying random alignments and 3 classes.
"""

from __future__ import annotations

import platform
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from formats.cs import encode, write_cs
from formats.mrc import StackWriter
from formats.star import join_image_names, write_star

PER_STACK = 500
#: Bumped when the metadata written by make_dataset changes (the stacks are kept).
METADATA_VERSION = 2


def make_dataset(root: Path, n: int, box: int, pixel_size: float = 1.2, seed: int = 0
                 ) -> tuple[Path, Path]:
    """Write ``n`` noise particles of ``box``² under ``root``; return (.cs, .star) paths.

    Reuses an existing data set of the same size.
    """
    root = root / f"n{n}_box{box}"
    cs_path, star_path = root / "particles.cs", root / "particles.star"
    marker = root / f".metadata-v{METADATA_VERSION}"
    if cs_path.is_file() and star_path.is_file() and marker.is_file():
        return cs_path, star_path
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, index = [], []
    for k, start in enumerate(range(0, n, PER_STACK)):
        count = min(PER_STACK, n - start)
        path = root / f"stack{k:04d}.mrcs"
        if not (path.is_file() and path.stat().st_size == 1024 + 4 * count * box * box):
            with StackWriter(path, count, box, pixel_size) as writer:
                for first in range(0, count, 100):
                    writer.write(rng.standard_normal((min(100, count - first), box, box),
                                                     dtype=np.float32))
        paths += [str(path)] * count
        index += range(count)
    angles = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    shifts = rng.uniform(-6, 6, (n, 2)).astype(np.float32)
    classes = rng.integers(0, 3, n)
    data = np.zeros(n, dtype=[("uid", "<u8"), ("blob/path", f"S{len(paths[0])}"),
                              ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                              ("blob/psize_A", "<f4"), ("alignments2D/shift", "<f4", (2,)),
                              ("alignments2D/pose", "<f4"), ("alignments2D/psize_A", "<f4"),
                              ("alignments2D/class", "<u4"), ("ctf/accel_kv", "<f4"),
                              ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
                              ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
                              ("ctf/df_angle_rad", "<f4")])
    data["uid"], data["blob/path"], data["blob/idx"] = np.arange(n), encode(paths), index
    data["blob/shape"], data["blob/psize_A"] = box, pixel_size
    data["alignments2D/shift"], data["alignments2D/pose"] = shifts, angles
    data["alignments2D/psize_A"], data["alignments2D/class"] = pixel_size, classes
    data["ctf/accel_kv"], data["ctf/cs_mm"], data["ctf/amp_contrast"] = 300.0, 2.7, 0.1
    data["ctf/df1_A"] = data["ctf/df2_A"] = rng.uniform(8000, 20000, n)
    write_cs(cs_path, data)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnAmplitudeContrast": [0.1], "rlnSphericalAberration": [2.7],
                           "rlnVoltage": [300.0], "rlnImagePixelSize": [pixel_size],
                           "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    particles = pd.DataFrame({
        "rlnImageName": join_image_names(np.asarray(index) + 1, np.asarray(paths)),
        "rlnAnglePsi": np.rad2deg(angles.astype(float)),
        "rlnOriginXAngst": shifts[:, 0] * pixel_size, "rlnOriginYAngst": shifts[:, 1] * pixel_size,
        "rlnClassNumber": classes + 1, "rlnOpticsGroup": 1,
        "rlnDefocusU": data["ctf/df1_A"], "rlnDefocusV": data["ctf/df2_A"],
        "rlnDefocusAngle": 0.0})
    write_star(star_path, {"optics": optics, "particles": particles})
    marker.touch()
    return cs_path, star_path


@dataclass(frozen=True)
class Timing:
    """Wall time (s), CPU time (user+sys, s) and peak resident memory (MB) of a command."""

    wall: float
    cpu: float
    peak_mb: float


def timed(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
          ) -> Timing:
    """Run ``command`` under ``/usr/bin/time`` and return its timing; raise on failure."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "TIME %U %S %M", *command], cwd=cwd,
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{done.stderr[-2000:]}")
    user, system, kb = re.findall(r"TIME ([\d.]+) ([\d.]+) (\d+)", done.stderr)[-1]
    return Timing(wall, float(user) + float(system), int(kb) / 1024)


def warm_cache(root: Path) -> None:
    """Read every stack once so that timed runs start from a warm page cache."""
    for path in sorted(root.glob("*.mrcs")):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = cpu
    import os

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.python_version()}"


def run_rows(box: int, n: int, runs: dict[str, list[str]], data_dir: Path, outputs: list[Path],
             repeats: int = 1) -> None:
    """Time each command (best of ``repeats``) and print a row: wall, CPU, img/s, peak MB.

    Before each run the ``outputs`` directories are emptied and flushed (``sync``) and the
    input stacks are read once, so every run starts warm and pays only for its own writes.
    """
    import os

    for name, command in runs.items():
        best = None
        for _ in range(repeats):
            for directory in outputs:
                for old in directory.glob("*"):
                    if old.is_file():
                        old.unlink()
            os.sync()
            warm_cache(data_dir)
            t = timed(command)
            best = t if best is None or t.wall < best.wall else best
        assert best is not None
        print(f"{box:>4} {name:<38} {best.wall:7.2f} {best.cpu:7.2f} {n / best.wall:8.0f} "
              f"{best.peak_mb:8.0f}", flush=True)


HEADER = f"{'box':>4} {'job':<38} {'wall s':>7} {'cpu s':>7} {'img/s':>8} {'peak MB':>8}"


#: Read every particle through csplugin's chunked reader and do nothing else.
#: Read every particle and write it out unchanged as one float32 stack: the I/O floor of export.
COPY = ("from csplugin.core.particles import open_particles; "
        "from csplugin.core.images import iter_chunks; "
        "from formats.mrc import StackWriter; t = open_particles({path!r}); "
        "w = StackWriter({out!r}, len(t), t.box(), 1.0).__enter__(); "
        "[w.write(im) for _, im in iter_chunks(t)]; w.__exit__(None, None, None)")

FLOOR = ("from csplugin.core.particles import open_particles; "
         "from csplugin.core.images import iter_chunks; "
         "[None for _ in iter_chunks(open_particles({path!r}))]")


def side_by_side(description: str, default_boxes: list[int],
                 runs_for: Callable[[Path, Path, Path], dict[str, list[str]]]) -> None:
    """The shared driver of the job benchmarks: parse ``--n --boxes --repeats --root``,
    make the data set per box, and time the read floor plus ``runs_for(cs, star, outdir)``
    in one table."""
    import argparse
    import sys
    import tempfile

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=12_000)
    parser.add_argument("--boxes", type=int, nargs="+", default=default_boxes)
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "csplugin_bench")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(HEADER)
    for box in args.boxes:
        cs, star = make_dataset(args.root, args.n, box)
        out = args.root / f"out_{box}"
        out.mkdir(exist_ok=True)
        runs = {"floor (read all stacks)": [sys.executable, "-c", FLOOR.format(path=str(cs))]}
        runs.update(runs_for(cs, star, out))
        run_rows(box, args.n, runs, cs.parent, [out], args.repeats)
