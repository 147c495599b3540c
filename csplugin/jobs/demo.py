"""``csplugin demo``: a synthetic job with known answers, run through csplugin's jobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from csplugin.core.particles import open_particles
from csplugin.engines.correlation import disc_correlation
from csplugin.jobs.export_aligned import export_aligned
from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra
from csplugin.synthetic import make_job
from formats.mrc import open_stack


def run_demo(outdir: str | Path, n_per_class: int = 300, box: int = 128,
             quiet: bool = True) -> Iterator[str]:
    """Write a synthetic job under ``outdir`` and export it aligned; yield report lines.

    The aligned particles of each class, averaged, must match the noise-free class image
    (correlation near 1; the noise limits it), and the ``.cs`` and ``.star`` descriptions of
    the same particles must give the same aligned stacks.
    """
    outdir = Path(outdir)
    job = make_job(outdir, n_per_class=n_per_class, box=box)
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
    yield f"  .cs and .star exports agree to {same:.1e} (max abs difference)"
    aligned = open_particles(results[".cs"].cs)
    for k in range(3):
        mean = stacks[".cs"][aligned.particles["class_index"].to_numpy() == k].mean(axis=0)
        yield (f"  class {k}: mean of {n_per_class} aligned particles vs true class image: "
               f"correlation in the disc {disc_correlation(mean, truth[k]):.4f}")
    spectra_dir = outdir / "power_spectra"
    result = power_spectra(open_particles(job.particles_cs), spectra_dir,
                           SpectrumOptions(axis="vertical"), overwrite=True)
    yield f"csplugin power-spectrum {job.particles_cs} -o {spectra_dir} --axis vertical"
    spectrum = open_stack(spectra_dir / "ps_class0.mrc").read([0])[0]
    centre = spectrum.shape[0] // 2
    meridian = spectrum[centre + 4:, centre]  # beyond the low-frequency core
    peak = (4 + int(np.argmax(meridian))) / (spectrum.shape[0] * job.pixel_size)
    yield (f"  helical class 0: axis found at {result.axis_angles_deg[0]:.2f} deg (true 0); "
           f"strongest meridional reflection at 1/{1 / peak:.2f} A (true rise "
           f"{job.box / 16 * job.pixel_size:.2f} A)")
