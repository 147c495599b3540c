"""Everything side by side at 1 and 2 (or more) threads: floors, csplugin jobs, RELION, and a
per-stage breakdown with its serial fraction and the time it implies at 16 cores (not a test).

Run: ``python benchmarks/bench_scaling.py [--n 12000] [--box 256] [--threads 1 2]
[--out /dev/shm/csplugin_bench_out] [--repeats 1] [--skip-jobs] [--skip-stages]``.

Part 1, whole commands (each in its own process under ``/usr/bin/time``, warm page cache,
outputs on ``--out``, a tmpfs by default, so that disk write-back stays out), each pinned
to T cores (``taskset``) with ``CSPLUGIN_THREADS = NUMBA_NUM_THREADS = T``:

* floors: read every particle; read and write them back; read + batched float32 rfft2
  (pyfftw plans of :mod:`csplugin.engines.fft`) + \\|F\\|² summed, at pad 1 and pad 2;
* csplugin: power spectra with RELION's work (pad 1, no mask, no normalisation, lines
  kept, class frame, and like RELION no indexing or half sets: spectra, their figures and
  class averages only), the same with the helical outputs, and with the defaults; export
  cubic, linear, cubic float16; class averages (mean);
* RELION (single-threaded, timed once): ``relion_image_handler --avg_ampl2_ali`` and
  ``relion_stack_create --apply_transformation --one_by_one``.

The last column is the parallel efficiency ``t(1) / (T t(T))``.

Part 2, stages (in one process per T, each stage alone over the whole data set): read,
FFT pad 1 / pad 2 (execute only), power accumulation into psi bins, bin rotation (3
classes x 360 bins), cubic and linear resampling kernels, stack writing, and the jobs' worker
threads as they run (each takes whole tasks): the spectra's read + condition + FFT + bins at
pad 1 and 2, the export's read + cubic + write. For each stage:
wall and CPU seconds per T, the serial fraction ``s`` of Amdahl's law
``t(T) = t(1) (s + (1 - s)/T)`` through the smallest and largest thread counts, the time it
implies at 16 threads, and the per-image cost at 1 thread, from which the model of
BENCHMARKS.md scales to N cores and 1,000,000 particles.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import COPY, FLOOR, machine, make_dataset, timed, warm_cache  # noqa: E402

#: Read every particle, take the batched float32 padded rfft2 with csplugin's cached pyfftw
#: plans and sum |F|²: the work any averaged spectrum must do.
FFT_FLOOR = (
    "import numpy as np; from csplugin.core.particles import open_particles; "
    "from csplugin.core.images import iter_chunks; from csplugin.engines import fft; "
    "t = open_particles({path!r}); n = t.box(); p = fft.padded_rfft2(n, {pad} * n, "
    "expected=len(t)); total = 0.0\n"
    "for _, im in iter_chunks(t):\n"
    "    for s in range(0, len(im), p.batch):\n"
    "        k = min(p.batch, len(im) - s); p.input[:k] = im[s:s + k]; f = p.execute(k)[:k]\n"
    "        total += float(np.vdot(f, f).real)\n")



def commands(cs: Path, star: Path, out: Path) -> dict[str, list[str]]:
    """Part 1's commands (csplugin ones honour the thread settings)."""
    py = sys.executable
    cli = [py, "-m", "csplugin"]
    runs = {
        "floor: read": [py, "-c", FLOOR.format(path=str(cs))],
        "floor: read + write": [py, "-c", COPY.format(path=str(cs), out=str(out / "copy.mrcs"))],
        "floor: read + FFT + |F|^2, pad 1": [py, "-c", FFT_FLOOR.format(path=str(cs), pad=1)],
        "floor: read + FFT + |F|^2, pad 2": [py, "-c", FFT_FLOOR.format(path=str(cs), pad=2)],
        "spectra, RELION's work (pad 1)": [
            *cli, "power-spectrum", str(cs), "-o", str(out / "ps"), "--pad", "1", "--no-mask",
            "--no-normalize", "--keep-detector-lines", "--axis", "class", "--no-index",
            "--no-half-sets", "--quiet", "--overwrite"],
        "spectra, pad 1 + helical outputs": [
            *cli, "power-spectrum", str(cs), "-o", str(out / "ps"), "--pad", "1", "--no-mask",
            "--no-normalize", "--keep-detector-lines", "--axis", "class", "--quiet",
            "--overwrite"],
        "spectra, defaults (pad 2)": [*cli, "power-spectrum", str(cs), "-o", str(out / "ps"),
                                      "--quiet", "--overwrite"],
    }
    for method in ("cubic", "linear"):
        runs[f"export {method}"] = [*cli, "export-aligned", str(cs), "-o", str(out / "ex"),
                                    "--interpolation", method, "--quiet", "--overwrite"]
    runs["export cubic --float16"] = [*runs["export cubic"], "--float16"]
    runs["class averages (mean)"] = [*cli, "class-averages", str(cs), "-o", str(out / "ca"),
                                     "--quiet", "--overwrite"]
    return runs


def relion_commands(star: Path, out: Path) -> dict[str, list[str]]:
    """RELION's counterparts, where installed (single-threaded: timed once)."""
    runs = {}
    if shutil.which("relion_image_handler"):
        runs["RELION --avg_ampl2_ali (pad 1)"] = [
            "relion_image_handler", "--i", str(star), "--o", str(out / "relion_ps.mrc"),
            "--avg_ampl2_ali"]
    if shutil.which("relion_stack_create"):
        runs["RELION stack_create --one_by_one"] = [
            "relion_stack_create", "--i", str(star), "--o", str(out / "aligned"),
            "--apply_transformation", "--one_by_one"]
    return runs


def pinned(command: list[str], threads: int) -> tuple[list[str], dict[str, str]]:
    """``command`` on ``threads`` cores with csplugin's thread settings to match."""
    env = {**os.environ, "CSPLUGIN_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    cores = sorted(os.sched_getaffinity(0))[:threads]
    prefix = ["taskset", "-c", ",".join(map(str, cores))] if shutil.which("taskset") else []
    return [*prefix, *command], env


def clean(out: Path) -> None:
    """Empty the output directory (previous runs' files) and flush."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.sync()


def run_jobs(cs: Path, star: Path, out: Path, data: Path, thread_counts: list[int], n: int,
             repeats: int, only: list[str] | None = None) -> dict[str, dict[int, float]]:
    """Part 1: print one row per command and thread count; return the best walls."""
    walls: dict[str, dict[int, float]] = {}
    print(f"{'job':<36} {'T':>3} {'wall s':>7} {'cpu s':>7} {'img/s':>8} {'peak MB':>8} "
          f"{'eff':>5}", flush=True)
    todo = [(name, cmd, t) for name, cmd in commands(cs, star, out).items()
            for t in thread_counts]
    todo += [(name, cmd, 1) for name, cmd in relion_commands(star, out).items()]
    if only:
        todo = [job for job in todo if any(word in job[0] for word in only)]
    for name, command, t in todo:
        best = None
        for _ in range(repeats):
            clean(out)
            warm_cache(data)
            cmd, env = pinned(command, t)
            try:
                timing = timed(cmd, env=env)
            except RuntimeError as exc:
                print(f"{name:<36} {t:>3} failed: {str(exc).splitlines()[-1][:80]}", flush=True)
                break
            best = timing if best is None or timing.wall < best.wall else best
        if best is None:
            continue
        walls.setdefault(name, {})[t] = best.wall
        one = walls[name].get(1)
        eff = f"{one / (t * best.wall):5.2f}" if one and t > 1 else ""
        print(f"{name:<36} {t:>3} {best.wall:7.2f} {best.cpu:7.2f} {n / best.wall:8.0f} "
              f"{best.peak_mb:8.0f} {eff:>5}", flush=True)
    clean(out)
    return walls


#: Part 2, run in a child process per thread count: each stage over the whole data set.
STAGES = r'''
import json, os, sys, time
from pathlib import Path
import numpy as np
from csplugin.core.particles import open_particles
from csplugin.core.images import iter_chunks, check_stacks
from csplugin.engines import fft
from csplugin.engines.power_spectrum import PowerSpectrumAccumulator
from csplugin.engines.transform import align_images
from formats.mrc import StackWriter

table = open_particles(sys.argv[1])
out = sys.argv[2]
box = table.box()
stacks = check_stacks(table)
angles = table.particles["angle"].to_numpy()
shifts = table.particles[["shift_x", "shift_y"]].to_numpy()
chunk = [im for _, im in iter_chunks(table, stacks=stacks, chunk_size=64)][:8]  # 512 images
n_loop = len(table)
result = {}

def stage(name, fn, images, repeats=int(sys.argv[3])):
    fn()  # warm (compiles, plans)
    best = None
    for _ in range(repeats):  # best wall of the repeats (other load only adds time)
        wall, cpu = time.perf_counter(), time.process_time()
        fn(timed=True)
        got = [time.perf_counter() - wall, time.process_time() - cpu, images]
        best = got if best is None or got[0] < best[0] else best
    result[name] = best

def read(timed=False):
    for _ in iter_chunks(table, stacks=stacks):
        if not timed:
            return
stage("read (page cache -> float32)", read, len(table))

for pad in (1, 2):
    plan = fft.padded_rfft2(box, pad * box, expected=10**6)
    def transform(timed=False, plan=plan):
        reps = n_loop // (len(chunk) * 64) if timed else 1
        for _ in range(max(1, reps)):
            for im in chunk:
                for s in range(0, len(im), plan.batch):
                    plan.input[:] = im[s:s + plan.batch]
                    plan.execute()
    stage(f"FFT pad {pad} (execute)", transform, max(1, n_loop // 512) * 512)
    accs = [PowerSpectrumAccumulator(box, pad=pad) for _ in range(3)]
    spectra = plan.output
    slots = np.arange(plan.batch)
    def accumulate(timed=False, spectra=spectra, accs=accs, slots=slots):
        reps = n_loop // plan.batch if timed else 1
        rng = np.random.default_rng(0)  # random bins, as real angles: memory-bound
        for r in range(reps):
            fft.accumulate_power(spectra, slots, rng.integers(0, accs[0].n_bins, len(slots)),
                                 accs[r % 3]._sums)
    stage(f"|F|^2 into psi bins, pad {pad}", accumulate, n_loop)
    for a in accs:
        a._counts[:] = 1
        a._sums[:] = 1.0
    def rotate(timed=False, accs=accs):
        for a in accs if timed else accs[:1]:
            a.rotated_sums()
    stage(f"rotate 3 x 360 bins, pad {pad}", rotate, 0)
    del accs

for method in ("cubic", "linear"):
    def kernel(timed=False, method=method):
        reps = n_loop // 512 if timed else 1
        for r in range(reps):
            for k, im in enumerate(chunk):
                rows = slice(64 * k, 64 * k + 64)
                align_images(im, angles[rows], shifts[rows], method)
    stage(f"{method} resampling kernel", kernel, (n_loop // 512) * 512)

# the jobs' own worker architecture: threads that each take whole tasks
from csplugin.core.images import reader
from csplugin.engines.parallel_spectra import accumulate_in_parallel
from csplugin.jobs.export_aligned import export_stack
classes = np.asarray(table.particles["class_index"].to_numpy(), np.int64) % 3
read_at = reader(table, stacks)
for pad in (1, 2):
    def workers(timed=False, pad=pad):
        rows = slice(None) if timed else slice(0, 256)
        accs = [PowerSpectrumAccumulator(box, pad=pad, mask=pad == 2, normalize=pad == 2)
                for _ in range(3)]
        owners = np.full(len(table), -1, np.int64)
        owners[rows] = classes[rows]
        accumulate_in_parallel(accs, owners, angles, read_at)
    stage(f"spectra workers pad {pad} (read+FFT+bins)", workers, len(table))

def export_workers(timed=False):
    part = table if timed else table.take(np.arange(256))
    export_stack(part, stacks, Path(out), box, 1.0, False, "cubic", None)
    os.unlink(out)
stage("export workers cubic (read+align+write)", export_workers, len(table))

def write(timed=False):
    count = n_loop if timed else 64
    with StackWriter(out, count, box, 1.0) as w:
        for s in range(0, count, 64):
            w.write(chunk[(s // 64) % len(chunk)][:min(64, count - s)])
    os.unlink(out)
stage("write float32 stack (tmpfs)", write, n_loop)
print("STAGES " + json.dumps(result))
'''


def run_stages(cs: Path, out: Path, thread_counts: list[int], repeats: int) -> None:
    """Part 2: per-stage wall/CPU per thread count, serial fraction, 16-core estimate."""
    measured: dict[int, dict[str, list[float]]] = {}
    out.mkdir(parents=True, exist_ok=True)
    for t in thread_counts:
        cmd, env = pinned([sys.executable, "-c", STAGES, str(cs), str(out / "stage.mrcs"),
                           str(repeats)], t)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"stages at {t} threads failed:\n{done.stderr[-2000:]}")
            return
        line = next(x for x in done.stdout.splitlines() if x.startswith("STAGES "))
        measured[t] = json.loads(line[len("STAGES "):])
    lo, hi = min(thread_counts), max(thread_counts)
    print(f"\n{'stage':<34} " + " ".join(f"{'wall@' + str(t):>8} {'cpu@' + str(t):>7}"
                                          for t in thread_counts)
          + f" {'serial':>6} {'@16 s':>6} {'us/img@1':>8}")
    for name in measured[lo]:
        cells = " ".join(f"{measured[t][name][0]:8.2f} {measured[t][name][1]:7.2f}"
                         for t in thread_counts)
        t_lo, t_hi = measured[lo][name][0], measured[hi][name][0]
        serial = amdahl_serial(t_lo, lo, t_hi, hi)
        at16 = t_lo * (serial + (1 - serial) / 16) / (serial + (1 - serial) / lo)
        images = measured[lo][name][2]
        per = f"{1e6 * t_lo / images:8.1f}" if images else f"{'':>8}"
        print(f"{name:<34} {cells} {serial:6.2f} {at16:6.2f} {per}")


def amdahl_serial(t_a: float, a: int, t_b: float, b: int) -> float:
    """Serial fraction ``s`` with ``t(T) = t1 (s + (1 - s)/T)`` through both points, in [0, 1]."""
    if a == b:
        return 1.0
    r = t_b / t_a  # = (s + (1-s)/b) / (s + (1-s)/a)
    # r (s + (1-s)/a) = s + (1-s)/b  ->  s (r - r/a - 1 + 1/b) = 1/b - r/a
    denom = r - r / a - 1 + 1 / b
    s = (1 / b - r / a) / denom if denom else 1.0
    return min(1.0, max(0.0, s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12_000)
    parser.add_argument("--box", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "csplugin_bench")
    parser.add_argument("--out", type=Path, default=Path("/dev/shm/csplugin_bench_out"))
    parser.add_argument("--skip-jobs", action="store_true")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--only", nargs="+", default=None,
                        help="time only the jobs whose name contains one of these words")
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.n} particles of {args.box}^2; outputs in {args.out}")
    cs, star = make_dataset(args.root, args.n, args.box)
    if not args.skip_jobs:
        run_jobs(cs, star, args.out, cs.parent, sorted(args.threads), args.n, args.repeats,
                 args.only)
    if not args.skip_stages:
        run_stages(cs, args.out, sorted(args.threads), max(args.repeats, 3))


if __name__ == "__main__":
    main()
