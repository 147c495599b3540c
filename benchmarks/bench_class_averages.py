"""Benchmark ``class_averages`` against the equivalent RELION 3.1 pipeline.

For each box size a synthetic set of ``--particles`` particles (3 classes) is written: a
``make_job`` of 100 noise-free particles per class, repeated with fresh white noise (sigma
1) into stacks of 300, described by one RELION 3.1 ``particles.star`` (both programs read
it). Each configuration runs in its own subprocess, which reports its wall time and peak
RSS (``resource.getrusage``: ``RUSAGE_SELF`` for csplugin, ``RUSAGE_CHILDREN`` for RELION,
i.e. the largest RELION process). The RELION pipeline is::

    relion_stack_create --i particles.star --o aligned --apply_transformation --one_by_one
    relion_star_handler --i aligned.star --o class_k.star --select rlnClassNumber \\
        --minval k --maxval k                                        # per class k
    relion_image_handler --i class_k.star --o average_k.mrc --average  # per class k

The last column is the lowest per-class correlation between the RELION averages and
csplugin's ``--interpolation linear`` mean (RELION's own bilinear interpolation), which
should be ~1.

Usage::

    python benchmarks/bench_class_averages.py [--particles 6000] [--boxes 128 256]
        [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPEAT = 300  # particles per stack (one noisy copy of the 3 x 100 rendered particles)


def make_dataset(root: Path, n: int, box: int) -> Path:
    """Write ``n`` particles (a multiple of 300) under ``root``; return the .star."""
    import pandas as pd

    from csplugin.core.images import check_stacks, read_chunk
    from csplugin.core.particles import open_particles
    from csplugin.synthetic import make_job
    from formats.mrc import write_stack
    from formats.star import join_image_names, read_star, write_star

    job = make_job(root / "seed", n_per_class=REPEAT // 3, box=box, noise_sigma=0.0)
    table = open_particles(job.particles_star, project_dir=job.project)
    clean = read_chunk(table, np.arange(len(table)), check_stacks(table))
    blocks = read_star(job.particles_star)
    rng = np.random.default_rng(0)
    rows = []
    (root / "stacks").mkdir(exist_ok=True)
    for k in range(n // REPEAT):
        name = f"stacks/copy{k:03d}.mrcs"
        write_stack(root / name, clean + rng.normal(0, 1, clean.shape).astype(np.float32),
                    job.pixel_size)
        copy = blocks["particles"].copy()
        copy["rlnImageName"] = join_image_names(np.arange(1, REPEAT + 1), [name] * REPEAT)
        rows.append(copy)
    star = root / "particles.star"
    write_star(star, {"optics": blocks["optics"],
                      "particles": pd.concat(rows, ignore_index=True)})
    return star


def worker_csplugin(star: Path, out: Path, stacker: str, interpolation: str) -> dict:
    from csplugin.core.particles import open_particles
    from csplugin.jobs.class_averages import class_averages

    start = time.perf_counter()
    table = open_particles(star, project_dir=star.parent)
    class_averages(table, out, stacker=stacker, interpolation=interpolation, overwrite=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "particles": len(table)}


def worker_relion(star: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(args, cwd=star.parent, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    start = time.perf_counter()
    run("relion_stack_create", "--i", star.name, "--o", str(out / "aligned"),
        "--apply_transformation", "--one_by_one")
    for k in (1, 2, 3):
        run("relion_star_handler", "--i", str(out / "aligned.star"), "--o",
            str(out / f"class_{k}.star"), "--select", "rlnClassNumber", "--minval", str(k),
            "--maxval", str(k))
        run("relion_image_handler", "--i", str(out / f"class_{k}.star"), "--o",
            str(out / f"average_{k}.mrc"), "--average")
    seconds = time.perf_counter() - start
    return {"seconds": seconds,
            "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def spawn(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def relion_agreement(relion_out: Path, linear_out: Path) -> float:
    from csplugin.engines.correlation import disc_correlation as correlation
    from formats.mrc import open_stack

    ours = open_stack(linear_out / "class_averages.mrcs").read(range(3))
    theirs = [open_stack(relion_out / f"average_{k}.mrc").read([0])[0] for k in (1, 2, 3)]
    return min(correlation(a, b) for a, b in zip(ours, theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, default=6000)
    parser.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data sets")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, star, out, *rest = args.worker
        result = (worker_csplugin(Path(star), Path(out), *rest) if kind == "csplugin"
                  else worker_relion(Path(star), Path(out)))
        print(json.dumps(result))
        return

    n = max(REPEAT, args.particles // REPEAT * REPEAT)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_class_averages_"))
    has_relion = shutil.which("relion_stack_create") is not None
    print(f"{n} particles, 3 classes; data in {workdir}")
    print(f"{'box':>4}  {'program':<28} {'seconds':>8} {'particles/s':>12} {'peak RSS MB':>12}"
          f"  {'corr':>6}")
    for box in args.boxes:
        root = workdir / f"box{box}"
        root.mkdir(parents=True, exist_ok=True)
        star = make_dataset(root, n, box)
        runs = [("csplugin mean (cubic)", "csplugin", "mean", "cubic"),
                ("csplugin mean (linear)", "csplugin", "mean", "linear"),
                ("csplugin median (cubic)", "csplugin", "median", "cubic")]
        for label, kind, stacker, interpolation in runs:
            out = root / f"out_{stacker}_{interpolation}"
            r = spawn(kind, str(star), str(out), stacker, interpolation)
            print(f"{box:>4}  {label:<28} {r['seconds']:>8.2f} {n / r['seconds']:>12.0f} "
                  f"{r['rss_mb']:>12.0f}")
        if has_relion:
            r = spawn("relion", str(star), str(root / "relion"))
            corr = relion_agreement(root / "relion", root / "out_mean_linear")
            print(f"{box:>4}  {'RELION 3.1 pipeline':<28} {r['seconds']:>8.2f} "
                  f"{n / r['seconds']:>12.0f} {r['rss_mb']:>12.0f}  {corr:>6.4f}")
        if not args.keep:
            shutil.rmtree(root)
    if not has_relion:
        print("RELION not found on PATH: RELION pipeline skipped")
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
