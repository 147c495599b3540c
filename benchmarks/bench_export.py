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

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import COPY, side_by_side  # noqa: E402


def runs(cs: Path, star: Path, out: Path) -> dict[str, list[str]]:
    """The export commands timed beside the read floor."""
    found = {"floor (read + write, no maths)": [
        sys.executable, "-c", COPY.format(path=str(cs), out=str(out / "copy.mrcs"))]}
    for method in ("cubic", "linear"):
        found[f"csplugin export-aligned {method}"] = [
            sys.executable, "-m", "csplugin", "export-aligned", str(cs), "-o", str(out),
            "--interpolation", method, "--quiet", "--overwrite"]
    found["csplugin export-aligned cubic --float16"] = [
        *found["csplugin export-aligned cubic"], "--float16"]
    if shutil.which("relion_stack_create"):
        found["relion_stack_create --one_by_one"] = [
            "relion_stack_create", "--i", str(star), "--o", str(out / "aligned"),
            "--apply_transformation", "--one_by_one"]
    return found


if __name__ == "__main__":
    side_by_side(__doc__, [128, 256], runs)
