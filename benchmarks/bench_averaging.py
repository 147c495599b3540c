"""Benchmark the class-averaging toolkit (csplugin.averaging) against ASPIRE's numbers.

A simulated set like the one of ``shared/reference/aspire.md`` §5: ``--n`` particles of
``--box`` px in ``--classes`` classes, each class a random structured image (Gaussian
blobs, :func:`csplugin.synthetic.render`), random in-plane angles and shifts (std
``--shift-std`` px), white noise at ``--snr`` (variance of the clean images / noise
variance), written as one stack with a cryoSPARC ``.cs`` carrying the true alignments.

Measured in this process after a warm-up on a small set (numba compiles once):

* ``DebugClassAvgSource`` (stored alignments; every class averaged, class order) and
  ``DefaultClassAvgSource`` (distance ranking), wall time from ``open_particles``;
* quality: Pearson correlation (inscribed disc) of each average with its clean class image,
  against the single-noisy-particle and whole-stack-mean baselines;
* ``BFRAverager2D`` / ``BFSRAverager2D`` (and the Reddy–Chatterji pair) per class of
  ``--members`` particles, with the agreement of the found angles with the stored ones.

ASPIRE is not installed here; its numbers (same machine class: 2 cores) are quoted from
aspire.md: ``DebugClassAvgSource`` 21-27 s for 2,000 x 64 px (RIR classification + BFR,
100 averages of 10 images; corr 0.75 ribosome, 0.68 asym), ``DefaultClassAvgSource``
5-19 min, and 0.14 s to align and average one class of 50 (BFT or BFR).

Usage::

    python benchmarks/bench_averaging.py [--n 2000] [--box 64] [--classes 20] [--snr 0.125]
        [--members 50] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

ASPIRE = {"debug_s": (21.0, 27.0), "default_s": (5 * 60.0, 19.5 * 60.0),
          "per_class_s": 0.14, "debug_corr": 0.75}


def make_set(root: Path, n: int, box: int, n_classes: int, snr: float, shift_std: float,
             seed: int = 0) -> tuple[Path, np.ndarray]:
    """Write the simulated set under ``root``; return the ``.cs`` and the clean classes."""
    from csplugin.synthetic import GaussianModel, render
    from formats.cs import encode, write_cs
    from formats.mrc import write_stack

    rng = np.random.default_rng(seed)
    u = box / 64
    models = []
    for _ in range(n_classes):
        k = rng.integers(4, 8)
        centres = rng.uniform(-14 * u, 14 * u, (k, 2))
        widths = rng.uniform(1.5 * u, 4.5 * u, (k, 2))
        tilt = rng.uniform(0, np.pi, k)
        c, s = np.cos(tilt), np.sin(tilt)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
        covs = rot @ (widths[:, :, None] ** 2 * np.eye(2)) @ np.transpose(rot, (0, 2, 1))
        models.append(GaussianModel(centres, covs, rng.uniform(0.5, 1.0, k)))
    classes = rng.permutation(np.arange(n) % n_classes)
    angles = rng.uniform(0, 2 * np.pi, n).astype(np.float32).astype(np.float64)
    shifts = rng.normal(0, shift_std, (n, 2)).astype(np.float32).astype(np.float64)
    images = np.empty((n, box, box), np.float32)
    for k, model in enumerate(models):
        mine = classes == k
        images[mine] = render(model, box, angles[mine], shifts[mine])
    sigma = np.sqrt(images.var() / snr)
    images += rng.normal(0, sigma, images.shape).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    write_stack(root / "particles.mrcs", images, 1.0)
    data = np.zeros(n, dtype=[("uid", "<u8"), ("blob/path", "S14"), ("blob/idx", "<u4"),
                              ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
                              ("alignments2D/shift", "<f4", (2,)), ("alignments2D/pose", "<f4"),
                              ("alignments2D/psize_A", "<f4"), ("alignments2D/class", "<u4")])
    data["uid"], data["blob/path"], data["blob/idx"] = np.arange(n), encode(
        ["particles.mrcs"] * n), np.arange(n)
    data["blob/shape"], data["blob/psize_A"], data["alignments2D/psize_A"] = box, 1.0, 1.0
    data["alignments2D/shift"], data["alignments2D/pose"] = shifts, angles
    data["alignments2D/class"] = classes
    write_cs(root / "particles.cs", data)
    clean = np.stack([render(m, box)[0] for m in models]).astype(np.float32)
    return root / "particles.cs", clean


def disc_corr(a: np.ndarray, b: np.ndarray) -> float:
    from csplugin.engines.correlation import disc_correlation as correlation

    return correlation(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--snr", type=float, default=1 / 8)
    parser.add_argument("--shift-std", type=float, default=2.0)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import csplugin
    from csplugin.averaging import (
        BFRAverager2D,
        BFSRAverager2D,
        BFSReddyChatterjiAverager2D,
        DebugClassAvgSource,
        DefaultClassAvgSource,
        ReddyChatterjiAverager2D,
    )
    from csplugin.engines.transform import align_images

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_averaging_"))
    print(machine())
    warm, _ = make_set(work / "warm", 200, args.box, 4, args.snr, args.shift_std, seed=1)
    small = csplugin.open_particles(warm)
    DebugClassAvgSource(small).images[:]
    DefaultClassAvgSource(small).images[:]
    for cls in (BFRAverager2D, BFSRAverager2D, ReddyChatterjiAverager2D,
                BFSReddyChatterjiAverager2D):
        cls(small).average([np.arange(20)])

    cs, clean = make_set(work / "set", args.n, args.box, args.classes, args.snr, args.shift_std)
    print(f"set: {args.n} particles x {args.box} px, {args.classes} classes, "
          f"SNR {args.snr:g}, shift std {args.shift_std} px ({work})")

    def run(preset: type) -> tuple[float, float, np.ndarray, object]:
        start, cpu = time.perf_counter(), time.process_time()
        source = preset(csplugin.open_particles(cs))
        averages = source.images[:]
        return time.perf_counter() - start, time.process_time() - cpu, averages, source

    for preset in (DebugClassAvgSource, DefaultClassAvgSource):
        run(preset)  # page cache warm
        seconds, cpu, averages, source = min((run(preset) for _ in range(3)),
                                             key=lambda r: r[0])
        labels = source.class_table.labels[source.selection_indices]
        corr = np.array([disc_corr(a, clean[k]) for a, k in zip(averages, labels)])
        ratio = ASPIRE["debug_s"][0] / seconds
        print(f"{preset.__name__:<22} {seconds:6.3f} s wall ({cpu:.3f} s CPU) for "
              f"{len(averages)} averages (ASPIRE Debug {ASPIRE['debug_s'][0]:.0f}-"
              f"{ASPIRE['debug_s'][1]:.0f} s: {ratio:.0f}x faster); corr to truth mean "
              f"{corr.mean():.3f} min {corr.min():.3f}")

    table = csplugin.open_particles(cs)
    raw = table.images[:]
    p = table.particles
    aligned = align_images(raw, p["angle"].to_numpy(), p[["shift_x", "shift_y"]].to_numpy())
    index = p["class_index"].to_numpy()
    single = np.mean([disc_corr(aligned[np.flatnonzero(index == k)[0]], clean[k])
                      for k in range(args.classes)])
    blob = raw.mean(axis=0)
    stack_mean = np.mean([disc_corr(blob, clean[k]) for k in range(args.classes)])
    print(f"baselines: one aligned noisy particle corr {single:.3f}; whole-stack mean "
          f"corr {stack_mean:.3f} (ASPIRE Debug ribosome: avg {ASPIRE['debug_corr']}, "
          "single 0.33, stack mean 0.50)")

    members = [np.flatnonzero(index == k)[:args.members] for k in range(args.classes)]
    for cls in (BFRAverager2D, BFSRAverager2D, ReddyChatterjiAverager2D,
                BFSReddyChatterjiAverager2D):
        averager = cls(table)
        start, cpu = time.perf_counter(), time.process_time()
        averages = averager.average(members, keys=np.arange(args.classes))
        per_class = (time.perf_counter() - start) / args.classes
        cpu_per_class = (time.process_time() - cpu) / args.classes
        agreement = averager.agreement(tolerance_deg=5.0)
        corr = np.mean([disc_corr(a, clean[k]) for k, a in enumerate(averages)])
        print(f"{cls.__name__:<28} {per_class:6.3f} s/class of {args.members} "
              f"({cpu_per_class:.3f} s CPU; ASPIRE {ASPIRE['per_class_s']} s); |dpsi| median "
              f"{agreement['median_angle_error_deg'].median():.2f} deg, within 5 deg "
              f"{agreement['within_tolerance'].mean():.1%}; corr to truth {corr:.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
