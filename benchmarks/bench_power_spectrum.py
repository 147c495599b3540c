"""Throughput of :class:`csplugin.engines.power_spectrum.PowerSpectrumAccumulator` (images/s),
not a test.

Run: ``python benchmarks/bench_power_spectrum.py [--count 4000] [--box 256] [--relion]``.
``--relion`` also times ``relion_image_handler --avg_ampl2_ali`` (single-threaded) on the
same images.  Uses all cores (scipy.fft ``workers=-1``, numba threads).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import mrcfile
import numba
import numpy as np

from csplugin.engines.power_spectrum import PowerSpectrumAccumulator

BATCH = 500  # images per add() call, as a reader would deliver them


def time_csplugin(images: np.ndarray, angles: np.ndarray, pad: int) -> tuple[float, float]:
    """Seconds for ``add`` over all images and for one ``result()`` (default settings)."""
    PowerSpectrumAccumulator(images.shape[-1], pad=pad).add(images[:4], angles[:4])  # JIT warm-up
    acc = PowerSpectrumAccumulator(images.shape[-1], pad=pad)
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        acc.add(images[i : i + BATCH], angles[i : i + BATCH])
    added = time.perf_counter()
    acc.result()
    return added - start, time.perf_counter() - added


def time_relion(images: np.ndarray, angles: np.ndarray) -> float:
    """Wall seconds of ``relion_image_handler --avg_ampl2_ali`` on the same images."""
    box = images.shape[-1]
    with tempfile.TemporaryDirectory() as tmp:
        stack, star = Path(tmp) / "x.mrcs", Path(tmp) / "x.star"
        with mrcfile.new(stack) as f:
            f.set_data(images)
        header = (
            "# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
            "_rlnImagePixelSize #3\n_rlnImageSize #4\n_rlnImageDimensionality #5\n_rlnVoltage #6\n"
            "_rlnSphericalAberration #7\n_rlnAmplitudeContrast #8\n"
            f"1 opticsGroup1 1.0 {box} 2 300.0 2.7 0.1\n\n\ndata_particles\n\nloop_\n"
            "_rlnImageName #1\n_rlnAnglePsi #2\n_rlnOpticsGroup #3\n"
        )
        rows = (f"{i + 1:06d}@{stack} {np.rad2deg(a):.6f} 1\n" for i, a in enumerate(angles))
        star.write_text(header + "".join(rows))
        start = time.perf_counter()
        command = ["relion_image_handler", "--i", str(star), "--o", str(Path(tmp) / "ps.mrc")]
        subprocess.run([*command, "--avg_ampl2_ali"], check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=4000, help="number of images")
    parser.add_argument("--box", type=int, default=256)
    parser.add_argument("--pads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--relion", action="store_true", help="also time relion_image_handler")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.count, args.box, args.box), dtype=np.float32)
    angles = rng.uniform(0, 2 * np.pi, args.count)
    print(f"{args.count} images of {args.box}^2, numba threads {numba.get_num_threads()}")
    for pad in args.pads:
        add_s, result_s = time_csplugin(images, angles, pad)
        print(
            f"csplugin pad {pad}: add {args.count / add_s:8,.0f} img/s, "
            f"result() {result_s:5.2f} s, "
            f"overall {args.count / (add_s + result_s):8,.0f} img/s"
        )
    if args.relion:
        if shutil.which("relion_image_handler") is None:
            print("relion_image_handler not found")
        else:
            seconds = time_relion(images, angles)
            print(f"RELION --avg_ampl2_ali (pad 1, 1 thread): {args.count / seconds:8,.0f} img/s")


if __name__ == "__main__":
    main()
