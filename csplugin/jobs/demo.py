"""``csplugin demo``: a synthetic job with known answers, run through csplugin's jobs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from csplugin.core.conventions import disc_mask
from csplugin.core.particles import open_particles
from csplugin.engines.correlation import disc_correlation
from csplugin.jobs.export_aligned import export_aligned
from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra
from csplugin.synthetic import make_job
from formats.mrc import open_stack

#: Thresholds of the demo's checks (the measured values are well inside them).
AGREEMENT_MAX = 1e-4  # .cs and .star exports, max abs difference (float32 rounding: ~1e-6)
#: Mean of n aligned particles vs the noise-free class image: the noise alone limits the
#: correlation to ρ = sqrt(S / (S + σ²/n)) (S the class image's variance in the disc); the
#: check allows this much below ρ (alignment errors would cost far more).
CORRELATION_MARGIN = 0.03
NOISE_SIGMA = 0.5
AXIS_TOLERANCE_DEG = 1.0
RISE_TOLERANCE = 0.015  # relative error of the meridional reflection's 1/rise


@dataclass(frozen=True)
class Check:
    """One verdict of the demo: ``what`` measured ``value``, which passes ``threshold``."""

    what: str
    value: float
    threshold: str
    passed: bool

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict}  {self.what}: {self.value:.4g} ({self.threshold})"


def run_demo(outdir: str | Path, n_per_class: int = 300, box: int = 128,
             quiet: bool = True) -> Iterator[str | Check]:
    """Write a synthetic job under ``outdir`` and run the jobs on it; yield report lines and
    :class:`Check` verdicts (the caller fails when any check does).

    The aligned particles of each class, averaged, must match the noise-free class image
    (correlation near 1; the noise limits it), and the ``.cs`` and ``.star`` descriptions of
    the same particles must give the same aligned stacks.
    """
    outdir = Path(outdir)
    job = make_job(outdir, n_per_class=n_per_class, box=box, noise_sigma=NOISE_SIGMA)
    yield f"synthetic job: {job.particles_cs} (+ passthrough) and {job.particles_star}"
    truth = open_stack(job.class_images).read(range(3))
    results = {}
    for source in (job.particles_cs, job.particles_star):
        table = open_particles(source)
        target = outdir / f"aligned_from_{source.suffix[1:]}"
        results[source.suffix] = export_aligned(table, target, overwrite=True)
        yield f"csplugin export-aligned {source} -o {target}"
    stacks = {k: open_stack(r.stacks[0]).read(range(r.particles)) for k, r in results.items()}
    same = float(np.abs(stacks[".cs"] - stacks[".star"]).max())
    yield Check(".cs and .star exports, max abs difference", same, f"<= {AGREEMENT_MAX:g}",
                same <= AGREEMENT_MAX)
    aligned = open_particles(results[".cs"].cs)
    for k in range(3):
        mean = stacks[".cs"][aligned.particles["class_index"].to_numpy() == k].mean(axis=0)
        corr = disc_correlation(mean, truth[k])
        signal = float(np.var(truth[k][disc_mask(box)]))
        bound = np.sqrt(signal / (signal + NOISE_SIGMA**2 / n_per_class)) - CORRELATION_MARGIN
        yield Check(f"class {k}: mean of {n_per_class} aligned particles vs true class image, "
                    "correlation in the disc", corr, f">= {bound:.4f}, the noise limit - "
                    f"{CORRELATION_MARGIN}", corr >= bound)
    spectra_dir = outdir / "power_spectra"
    result = power_spectra(open_particles(job.particles_cs), spectra_dir,
                           SpectrumOptions(axis="vertical"), overwrite=True)
    yield f"csplugin power-spectrum {job.particles_cs} -o {spectra_dir} --axis vertical"
    # the job's own layer lines (layer_lines.csv): its strongest meridional reflection
    lines = pd.read_csv(spectra_dir / "layer_lines.csv")
    flagged = lines["meridional"].astype(str).str.lower().eq("true")
    meridional = lines[(lines["class"] == 0) & flagged]
    peak = (float(meridional.loc[meridional["strength"].idxmax(), "height_inv_A"])
            if len(meridional) else float("nan"))
    axis = (float(result.axis_angles_deg[0]) + 90) % 180 - 90  # an axis is an angle mod 180°
    yield Check("helical class 0: axis angle found (deg mod 180, true 0)", axis,
                f"|error| <= {AXIS_TOLERANCE_DEG}", abs(axis) <= AXIS_TOLERANCE_DEG)
    rise = job.box / 16 * job.pixel_size
    yield Check(f"helical class 0: strongest meridional layer line at 1/x A, true rise "
                f"{rise:.2f} A", 1 / peak, f"within {RISE_TOLERANCE:.1%}",
                bool(abs(1 / peak - rise) <= RISE_TOLERANCE * rise))
    yield from _helical_indexing(outdir)


def _helical_indexing(outdir: Path) -> Iterator[str | Check]:
    """A projected 3D helix (rise 10 Å, twist 33.5°, C1; 4 filaments x 10 overlapping
    segments, oblique in the class frame): the power-spectrum job's layer-line detection must
    put a meridional reflection at 1/rise; its best symmetry candidate is reported."""
    import csv

    from csplugin.synthetic.helices import make_helical_job, preset_helices

    helix = preset_helices()[0]
    job = make_helical_job(outdir / "helical", helices=[helix], axis_angle=35.0,
                           noise_sigma=0.3, seed=0, filaments_per_helix=4,
                           segments_per_filament=10)
    target = outdir / "helical" / "power_spectra"
    power_spectra(open_particles(job.particles_cs), target, SpectrumOptions(), overwrite=True)
    yield f"csplugin power-spectrum {job.particles_cs} -o {target}  (see {target / 'index.html'})"
    with open(target / "layer_lines.csv", newline="") as f:
        heights = [float(r["height_inv_A"]) for r in csv.DictReader(f)
                   if r["meridional"] == "true"]
    error = min((abs(1 / h - helix.rise) / helix.rise for h in heights if h > 0),
                default=float("inf"))
    yield Check(f"helical indexing: meridional reflection at 1/rise, rise {helix.rise:g} A, "
                "relative error", error, f"<= {RISE_TOLERANCE:.1%}", error <= RISE_TOLERANCE)
    with open(target / "helical_candidates.csv", newline="") as f:
        best = next(csv.DictReader(f), None)
    if best is not None:
        yield (f"helical indexing: best candidate rise {float(best['rise_A']):.2f} A, twist "
               f"{float(best['twist_deg']):.2f} deg, C{best['csym']} (true {helix.rise:g} A, "
               f"{helix.twist:g} deg, C{helix.csym}; the hand is not decidable)")
