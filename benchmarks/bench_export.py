"""export-aligned throughput and peak memory beside the I/O floor and RELION (not a test).

Run: ``python benchmarks/bench_export.py [--n 12000] [--boxes 128 256]``. Each command runs in
its own process under ``/usr/bin/time`` with a warm page cache, after the previous outputs are
deleted and flushed (``sync``), so that no run pays for another's write-back:

* floors: read every particle through csplugin's chunked reader and do nothing else; and
  read them and write them out unchanged (the I/O any export must do);
* csplugin export-aligned, cubic (default) and linear, writing stacks + .star + .cs;
* ``relion_stack_create --apply_transformation --one_by_one`` (absolute paths), if installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HEADER, machine, make_dataset, run_rows  # noqa: E402

FLOOR = ("from csplugin.particles import open_particles; from csplugin.images import iter_chunks; "
         "[None for _ in iter_chunks(open_particles({path!r}))]")
#: Read every particle and write it out unchanged as one float32 stack: the I/O floor of export.
COPY = ("from csplugin.particles import open_particles; from csplugin.images import iter_chunks; "
        "from formats.mrc import StackWriter; t = open_particles({path!r}); "
        "w = StackWriter({out!r}, len(t), t.box(), 1.0).__enter__(); "
        "[w.write(im) for _, im in iter_chunks(t)]; w.__exit__(None, None, None)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=12_000)
    parser.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "csplugin_bench")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(HEADER)
    for box in args.boxes:
        cs, star = make_dataset(args.root, args.n, box)
        out = args.root / f"out_{box}"
        out.mkdir(exist_ok=True)
        runs = {"floor (read all stacks)": [sys.executable, "-c", FLOOR.format(path=str(cs))],
                "floor (read + write, no maths)": [
                    sys.executable, "-c", COPY.format(path=str(cs), out=str(out / "copy.mrcs"))]}
        for method in ("cubic", "linear"):
            runs[f"csplugin export-aligned {method}"] = [
                sys.executable, "-m", "csplugin", "export-aligned", str(cs), "-o", str(out),
                "--interpolation", method, "--quiet", "--overwrite"]
        runs["csplugin export-aligned cubic --float16"] = [
            *runs["csplugin export-aligned cubic"], "--float16"]
        if shutil.which("relion_stack_create"):
            runs["relion_stack_create --one_by_one"] = [
                "relion_stack_create", "--i", str(star), "--o", str(out / "aligned"),
                "--apply_transformation", "--one_by_one"]
        run_rows(box, args.n, runs, cs.parent, [out], args.repeats)


if __name__ == "__main__":
    main()
