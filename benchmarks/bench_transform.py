"""Per-image cost of :mod:`csplugin.engines.transform`'s kernels (µs/image), not a test.

Run: ``python benchmarks/bench_transform.py [--count 300] [--boxes 128 256] [--baseline HEAD~1]``.

Prints, per box size, the cubic kernel's two stages (spline prefilter, evaluation), the
whole cubic kernel and the linear kernel, best of ``--repeats`` timed calls.  With
``--baseline REV`` the module as of git revision ``REV`` is timed too, interleaved with
the current one in the same run (timings on a shared machine drift by tens of percent
between runs), and the largest difference of the outputs is reported.

For kernel costs, pin to one core with one thread, e.g.
``taskset -c 1 env NUMBA_NUM_THREADS=1 CSPLUGIN_THREADS=1 python benchmarks/bench_transform.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numba
import numpy as np
from numba import njit

from csplugin.engines import transform

ROOT = Path(__file__).resolve().parent.parent


def load_revision(rev: str, where: Path) -> ModuleType:
    """``csplugin/engines/transform.py`` as of git revision ``rev``, imported as a module."""
    source = subprocess.run(["git", "show", f"{rev}:csplugin/engines/transform.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = where / f"transform_{rev.replace('~', '_').replace('^', '_')}.py"
    path.write_text(source)
    sys.path.insert(0, str(where))  # numba's cache needs an importable module
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def kernels(module: ModuleType, box: int) -> dict[str, Callable[..., None]]:
    """Callables ``f(images, cos, sin, shifts, out)`` for each stage of ``module``'s kernels."""
    prefilter, evaluate = module._spline_coefficients, module._bspline
    m = box + 2 * module._PAD
    coef, work = np.zeros((m, m), np.float32), np.zeros((m, m), np.float32)

    @njit
    def prefilter_loop(images, coef, work):
        for k in range(images.shape[0]):
            prefilter(images[k], coef, work)

    @njit
    def evaluate_loop(coef, c, s, shifts, out):
        for k in range(out.shape[0]):
            evaluate(coef, c[k], s[k], shifts[k, 0], shifts[k, 1], out[k])

    prefilter_loop(np.zeros((1, box, box), np.float32), coef, work)  # an image's coefficients
    return {
        "cubic prefilter": lambda images, c, s, sh, out: prefilter_loop(images, coef, work),
        "cubic evaluation": lambda images, c, s, sh, out: evaluate_loop(coef, c, s, sh, out),
        "cubic (whole)": module._align_cubic,
        "linear": module._align_linear,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=300, help="images per timed call")
    parser.add_argument("--boxes", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="git revision to compare with (e.g. HEAD~1)")
    args = parser.parse_args()
    print(f"numba threads: {numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS} available")
    with tempfile.TemporaryDirectory() as tmp:
        modules = {"new": transform}
        if args.baseline:
            modules = {args.baseline: load_revision(args.baseline, Path(tmp)), **modules}
        for box in args.boxes:
            rng = np.random.default_rng(0)
            images = rng.standard_normal((args.count, box, box), dtype=np.float32)
            angles = rng.uniform(-np.pi, np.pi, args.count)
            shifts = rng.uniform(-5.0, 5.0, (args.count, 2))
            call = (images, np.cos(angles), np.sin(angles), shifts)
            runs = {name: kernels(module, box) for name, module in modules.items()}
            outs = {}
            for name, stages in runs.items():  # compile / load, and keep the results
                for kind in ("cubic", "linear"):
                    outs[name, kind] = np.empty_like(images)
                    stages[f"{kind} (whole)" if kind == "cubic" else kind](*call, outs[name, kind])
                for f in stages.values():
                    f(*call, np.empty_like(images))
            best = {(name, stage): np.inf for name in runs for stage in runs[name]}
            out = np.empty_like(images)
            for _ in range(args.repeats):  # interleaved: old and new see the same load
                for name, stages in runs.items():
                    for stage, f in stages.items():
                        start = time.perf_counter()
                        f(*call, out)
                        best[name, stage] = min(best[name, stage], time.perf_counter() - start)
            print(f"box {box}: µs/image, best of {args.repeats} x {args.count} images")
            for stage in runs["new"]:
                cols = "  ".join(f"{name} {best[name, stage] / args.count * 1e6:7.1f}"
                                 for name in runs)
                print(f"  {stage:17s} {cols}")
            if args.baseline:
                for kind in ("cubic", "linear"):
                    ref, new = outs[args.baseline, kind], outs["new", kind]
                    diff = np.abs(new - ref).max() / np.abs(ref).max()
                    print(f"  {kind}: max |new - {args.baseline}| / max |{args.baseline}| = "
                          f"{diff:.2e}")


if __name__ == "__main__":
    main()
