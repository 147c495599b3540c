"""power-spectrum job throughput and peak memory beside the I/O floor and RELION (not a test).

Run: ``python benchmarks/bench_spectra.py [--n 12000] [--boxes 256]``. Same data set and
conditions as ``bench_export.py``: each command in its own process under ``/usr/bin/time``,
warm page cache. Compared:

* floors: read every particle through csplugin's chunked reader; and read them and take
  their batched FFTs and |F|² (the work any averaged spectrum needs);
* ``csplugin power-spectrum`` at pad 1 (RELION's sampling) and pad 2 (the default), with
  the default conditioning, per-class + pooled + camera-frame spectra, PNGs and profiles;
* ``relion_image_handler --avg_ampl2_ali`` (pooled only, half plane), if installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import FLOOR  # noqa: E402

#: Read every particle and take the batched float32 FFTs (pad 1) and |F|², nothing else: the
#: work any averaged power spectrum must do, whatever it does about rotation.
FFT = ("import scipy.fft, numpy as np; from csplugin.particles import open_particles; "
       "from csplugin.images import iter_chunks; "
       "[np.square(np.abs(scipy.fft.rfft2(im, workers=-1))).sum() for _, im in "
       "iter_chunks(open_particles({path!r}))]")
from common import HEADER, machine, make_dataset, run_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=12_000)
    parser.add_argument("--boxes", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "csplugin_bench")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(HEADER)
    for box in args.boxes:
        cs, star = make_dataset(args.root, args.n, box)
        out = args.root / f"ps_{box}"
        out.mkdir(exist_ok=True)
        runs = {"floor (read all stacks)": [sys.executable, "-c", FLOOR.format(path=str(cs))],
                "floor (read + FFT + |F|², pad 1)": [sys.executable, "-c",
                                                     FFT.format(path=str(cs))]}
        for pad in (1, 2):
            runs[f"csplugin power-spectrum --pad {pad}"] = [
                sys.executable, "-m", "csplugin", "power-spectrum", str(cs), "-o", str(out),
                "--pad", str(pad), "--quiet", "--overwrite"]
        if shutil.which("relion_image_handler"):
            runs["relion_image_handler --avg_ampl2_ali"] = [
                "relion_image_handler", "--i", str(star), "--o", str(out / "relion_ps.mrc"),
                "--avg_ampl2_ali"]
        run_rows(box, args.n, runs, cs.parent, [out], args.repeats)


if __name__ == "__main__":
    main()
