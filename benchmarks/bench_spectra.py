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

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Read every particle and take the batched float32 FFTs (pad 1) and |F|², nothing else: the
#: work any averaged power spectrum must do, whatever it does about rotation.
FFT = ("import scipy.fft, numpy as np; from csplugin.core.particles import open_particles; "
       "from csplugin.core.images import iter_chunks; "
       "[np.square(np.abs(scipy.fft.rfft2(im, workers=-1))).sum() for _, im in "
       "iter_chunks(open_particles({path!r}))]")
from common import side_by_side  # noqa: E402


def runs(cs: Path, star: Path, out: Path) -> dict[str, list[str]]:
    """The power-spectrum commands timed beside the read floor."""
    found = {"floor (read + FFT + |F|², pad 1)": [sys.executable, "-c", FFT.format(path=str(cs))]}
    for pad in (1, 2):
        found[f"csplugin power-spectrum --pad {pad}"] = [
            sys.executable, "-m", "csplugin", "power-spectrum", str(cs), "-o", str(out),
            "--pad", str(pad), "--quiet", "--overwrite"]
    if shutil.which("relion_image_handler"):
        found["relion_image_handler --avg_ampl2_ali"] = [
            "relion_image_handler", "--i", str(star), "--o", str(out / "relion_ps.mrc"),
            "--avg_ampl2_ali"]
    return found


if __name__ == "__main__":
    side_by_side(__doc__, [256], runs)
