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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HEADER, machine, make_dataset, run_rows, timed  # noqa: E402

from csplugin.synthetic.metadata import make_metadata  # noqa: E402


def child(source: Path, target: Path) -> None:
    """Read, filter and convert one file; print the phase times as JSON (run in a child)."""
    from csplugin.core.native import save_particles
    from csplugin.core.particles import open_particles

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
    start = timed([sys.executable, "-c", "from csplugin.app.dask import connect\n"
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
