"""What the helical indexing adds to ``power-spectrum`` (issue 12), and its results.

Run: ``python benchmarks/bench_helical_index.py [--filaments 10] [--segments 20] [--box 256]
[--tile 10] [--repeats 3]``.

The five preset synthetic helices (:func:`csplugin.synthetic.helices.preset_helices`: three
short-pitch C1, one C3, one with 1/rise past Nyquist; 320 Å boxes, oblique in the class
frame, noise σ 0.5 per pixel against a subunit peak of 1) are written once as a cryoSPARC
job; ``--tile`` repeats every particle that many times (same images, so the spectra cost
scales while the indexing does not). The job then runs, alternating, ``repeats`` times each:

* ``plain``: ``--no-index --no-half-sets`` (spectra, stacks, averages, figures);
* ``halves``: ``--no-index`` (plus the two half-set accumulators per class);
* ``default``: half sets and indexing (layer lines, candidates, overlays, index.html).

Printed: best wall and CPU (process) seconds of each, the relative cost of the indexing
(default vs halves) and of the half sets (halves vs plain), the job's own timing of its
helical steps, and per class the meridional heights found and the rank of the true
(rise, twist, Cn) among the candidates. The machine is shared: take the best of the repeats.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from csplugin.core.particles import open_particles
from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra
from csplugin.synthetic.helices import make_helical_job


def _rank(rows: list[dict[str, str]], k: int, spec: dict) -> int | None:
    for r in rows:
        if (int(r["class"]) == k
                and abs(float(r["rise_A"]) - spec["rise"]) <= 0.02 * spec["rise"]
                and abs(abs(float(r["twist_deg"])) - abs(spec["twist"])) <= 1.5
                and int(r["csym"]) == spec["csym"]):
            return int(r["rank"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filaments", type=int, default=10)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--box", type=int, default=256)
    parser.add_argument("--tile", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = make_helical_job(root, axis_angle=[30, 90, 120, 10, 75], noise_sigma=args.noise,
                               seed=0, filaments_per_helix=args.filaments,
                               segments_per_filament=args.segments, box=args.box,
                               pixel_size=2.5 * 128 / args.box)
        table = open_particles(job.particles_cs)
        if args.tile > 1:
            table = table.take(np.tile(np.arange(len(table)), args.tile))
        configs = {"plain": SpectrumOptions(index=False, half_sets=False),
                   "halves": SpectrumOptions(index=False), "default": SpectrumOptions()}
        power_spectra(table, root / "warm", SpectrumOptions())  # plans, JIT, matplotlib
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in configs}
        for _ in range(args.repeats):
            for name, options in configs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                power_spectra(table, root / name, options, overwrite=True)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}
        print(f"{len(table)} particles, box {args.box}, 5 classes")
        for name, (w, c) in best.items():
            print(f"  {name:8s} wall {w:6.2f} s  cpu {c:6.2f} s")
        for what, a, b in (("indexing", "default", "halves"), ("half sets", "halves", "plain")):
            print(f"  {what}: wall {100 * (best[a][0] / best[b][0] - 1):+.1f} %, "
                  f"cpu {100 * (best[a][1] / best[b][1] - 1):+.1f} %")
        out = root / "default"
        summary = json.loads((out / "summary.json").read_text())
        print("  job's own timing (s):", {k: round(v, 3) for k, v in summary["seconds"].items()})
        truth = json.loads(job.truth_json.read_text())["classes"]
        with open(out / "helical_candidates.csv", newline="") as f:
            cands = list(csv.DictReader(f))
        for key, spec in truth.items():
            info = summary["indexing"][key]
            merid = [round(h, 4) for h in info["meridional_heights_inv_A"]]
            print(f"  class {key} {spec['name']}: 1/rise {1 / spec['rise']:.4f}, meridional "
                  f"{merid}, true lattice rank {_rank(cands, int(key), spec)}")


if __name__ == "__main__":
    main()
