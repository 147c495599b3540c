"""Scale evidence (not a test): 1,000,000-particle metadata, and what Dask adds.

Run: ``python benchmarks/bench_scale.py [--n 1000000] [--small 3000] [--box 128]
[--workers 1 2 4]``.

1. **Metadata at scale.** A cryoSPARC ``.cs`` (blob, alignments2D, ctf, location; 2,000
   stacks of 500) and the same particles as a RELION 3.1 ``.star`` are written once. Each
   is then, in its own process under ``/usr/bin/time``, read (:func:`open_particles`),
   filtered (two of three classes) and converted to the other format, timing each phase;
   the peak resident memory covers the whole process (Python, numpy, pandas included).
   The stacks are not needed: metadata only.
2. **Dask overhead.** On a small data set the three jobs run plain and with
   ``--workers N`` (a local Dask cluster of N processes, started and stopped by the command,
   all of it inside the timed wall time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HEADER, machine, make_dataset, run_rows, timed  # noqa: E402

from formats.cs import encode, write_cs  # noqa: E402
from formats.star import join_image_names, write_star  # noqa: E402

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


def child(source: Path, target: Path) -> None:
    """Read, filter and convert one file; print the phase times as JSON (run in a child)."""
    from csplugin.particles import open_particles, save_particles

    times: dict[str, float] = {}
    start = time.perf_counter()
    table = open_particles(source)
    times["read"] = time.perf_counter() - start
    start = time.perf_counter()
    wanted = [0, 2] if table.kind == "cs" else [1, 3]
    selected = table.select_classes(wanted)
    times["filter"] = time.perf_counter() - start
    start = time.perf_counter()
    save_particles(selected, target)
    times["convert"] = time.perf_counter() - start
    print(json.dumps({**times, "rows": len(table), "kept": len(selected)}))


def metadata_rows(cs_path: Path, star_path: Path, out: Path) -> None:
    """Print read / filter / convert times and peak RSS for both formats."""
    print(f"{'input':<7} {'rows':>9} {'kept':>8} {'read s':>7} {'filter s':>8} "
          f"{'write s':>7} {'wall s':>7} {'peak MB':>8}  (convert to)")
    file_mb = {p.suffix: p.stat().st_size / 2**20 for p in (cs_path, star_path)}
    for source, target in ((cs_path, out / "converted.star"), (star_path, out / "converted.cs")):
        command = [sys.executable, __file__, "--child", str(source), str(target)]
        done = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *command],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        phases = json.loads(done.stdout.strip().splitlines()[-1])
        wall, kb = done.stderr.strip().splitlines()[-1].split()[1:]
        print(f"{source.suffix:<7} {phases['rows']:>9} {phases['kept']:>8} {phases['read']:7.2f} "
              f"{phases['filter']:8.2f} {phases['convert']:7.2f} {float(wall):7.2f} "
              f"{int(kb) / 1024:8.0f}  ({target.suffix}; input {file_mb[source.suffix]:.0f} MB)",
              flush=True)


def dask_rows(root: Path, n: int, box: int, workers: list[int]) -> None:
    """Time the three jobs plain and on local Dask clusters of each size in ``workers``."""
    cs, _ = make_dataset(root, n, box)
    jobs = {"export-aligned": [], "power-spectrum": [], "class-averages": ["--stacker", "median"]}
    print(HEADER)
    for job, extra in jobs.items():
        out = root / f"out_{job}"
        runs = {}
        for label, options in [("plain", [])] + [(f"--workers {w}", ["--workers", str(w)])
                                                 for w in workers]:
            runs[f"{job} {label}"] = [sys.executable, "-m", "csplugin", job, str(cs), "-o",
                                      str(out), "--quiet", "--overwrite", *extra, *options]
        run_rows(box, n, runs, cs.parent, [out])
    start = timed([sys.executable, "-c", "from csplugin.distributed import connect\n"
                   "with connect(workers=2): pass"])
    print(f"     start and stop a 2-process local cluster alone: {start.wall:.2f} s wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=3000)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "csplugin_bench")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"machine: {machine()}")
    start = time.perf_counter()
    cs_path, star_path = make_metadata(args.root / "scale", args.n)
    print(f"metadata of {args.n:,} particles ready in {time.perf_counter() - start:.1f} s")
    metadata_rows(cs_path, star_path, args.root / "scale")
    print()
    dask_rows(args.root, args.small, args.box, args.workers)


if __name__ == "__main__":
    main()
