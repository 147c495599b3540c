"""export-aligned throughput and peak memory beside the I/O floor and RELION (not a test).

Run: ``python benchmarks/bench_export.py [--n 12000] [--boxes 128 256]``. Each command runs in
its own process under ``/usr/bin/time`` with a warm page cache, after the previous outputs are
deleted and flushed (``sync``), so that no run pays for another's write-back:

* floor: read every particle through csplugin's chunked reader and do nothing else;
* csplugin export-aligned, cubic (default) and linear, writing stacks + .star + .cs;
* ``relion_stack_create --apply_transformation --one_by_one`` (absolute paths), if installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_dataset, timed, warm_cache  # noqa: E402

FLOOR = ("from csplugin.particles import open_particles; from csplugin.images import iter_chunks; "
         "[None for _ in iter_chunks(open_particles({path!r}))]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=12_000)
    parser.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "csplugin_bench")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{'box':>4} {'job':<34} {'wall s':>7} {'cpu s':>7} {'img/s':>8} {'peak MB':>8}")
    for box in args.boxes:
        cs, star = make_dataset(args.root, args.n, box)
        runs = {"floor (read all stacks)": [sys.executable, "-c", FLOOR.format(path=str(cs))]}
        for method in ("cubic", "linear"):
            out = args.root / f"out_{box}_{method}"
            runs[f"csplugin export-aligned {method}"] = [
                sys.executable, "-m", "csplugin", "export-aligned", str(cs), "-o", str(out),
                "--interpolation", method, "--quiet", "--overwrite"]
        if shutil.which("relion_stack_create"):
            out = args.root / f"out_{box}_relion"
            out.mkdir(exist_ok=True)
            runs["relion_stack_create --one_by_one"] = [
                "relion_stack_create", "--i", str(star), "--o", str(out / "aligned"),
                "--apply_transformation", "--one_by_one"]
        for name, command in runs.items():
            for old in args.root.glob(f"out_{box}_*/*"):  # every run writes into clean space
                old.unlink()
            os.sync()  # and starts with no dirty pages left by the previous run
            warm_cache(cs.parent)
            t = min((timed(command) for _ in range(args.repeats)), key=lambda t: t.wall)
            print(f"{box:>4} {name:<34} {t.wall:7.2f} {t.cpu:7.2f} {args.n / t.wall:8.0f} "
                  f"{t.peak_mb:8.0f}", flush=True)


if __name__ == "__main__":
    main()
