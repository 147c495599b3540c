"""The ``csplugin`` command line: thin Typer wrappers over the Python API."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from csplugin.app.options import (
    AmplitudeContrast,
    Classes,
    Input,
    Interpolation,
    OneLineUsage,
    OutDir,
    Overwrite,
    Passthrough,
    ProjectDir,
    Quiet,
    Scheduler,
    SphericalAberration,
    Voltage,
    Workers,
    err,
    fraction,
    not_an_input,
    out,
    parse_angles,
    parse_classes,
    parse_range,
    positive,
    progress_bar,
)
from formats import InputError

app = typer.Typer(
    name="csplugin",
    cls=OneLineUsage,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
    help=(
        "Apply the stored 2D alignments of cryoSPARC (.cs) or RELION (.star) particles: "
        "aligned stacks, class averages, averaged power spectra.\n\n"
        "Numbering follows each input's own convention: classes and image indices are "
        "0-based in cryoSPARC .cs files (alignments2D/class, blob/idx) and 1-based in RELION "
        ".star files (rlnClassNumber, N@stack)."
    ),
)
#: Set by ``--debug`` (or the environment variable CSPLUGIN_DEBUG=1): unexpected errors
#: show their traceback instead of one line.
_DEBUG = {"on": bool(os.environ.get("CSPLUGIN_DEBUG"))}


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help="Show the full traceback of an unexpected error (a bug: please report "
                        "it with the traceback).")] = False) -> None:
    """Apply the stored 2D alignments of cryoSPARC (.cs) or RELION (.star) particles."""
    _DEBUG["on"] = _DEBUG["on"] or debug


@app.command()
def info(
    file: Input,
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Summarise a particle file and check it before a job: particles, classes and counts,
    pixel and box sizes, optics groups, field groups, and every referenced stack opened and
    checked (missing, truncated or corrupt, index past the end, box mismatch). Exit status 0
    when every image can be read, 2 when anything is wrong (listed). A file that is not a 2D
    particle file (RELION 4/5 subtomograms, Warp/M particle series, tomograms or tilt-series
    tables, job, pipeline, model, MTF files, ...) is described, with exit status 2."""
    from csplugin.jobs.info import inspect

    summary = inspect(file, passthrough, project_dir)
    if as_json:
        out.print_json(json.dumps(summary))
    elif "what" in summary:
        out.print(f"[bold]{escape(str(summary['file']))}[/]")
        out.print(f"is             {summary['what']}", markup=False, highlight=False)
        for line in summary["details"]:
            out.print(f"  {line}", markup=False, highlight=False)
        out.print(f"usable         no: {summary['why']}", markup=False, highlight=False)
        out.print(f"instead        {summary['advice']}", markup=False, highlight=False)
    else:
        _print_summary(summary)
    if not summary["ok"]:
        raise typer.Exit(2)


def _print_summary(summary: dict) -> None:
    """The text form of ``csplugin info`` for a particle file."""
    out.print(f"[bold]{escape(str(summary['file']))}[/] ({summary['format']})")
    out.print(f"particles      {summary['particles']}")
    classes = summary["classes"]
    listing = ", ".join(f"{k}: {c}" for k, c in classes.items()) if classes else "none"
    out.print(f"classes        {len(classes)} ({summary['class_numbering']}): {listing}")
    out.print(f"pixel size     {', '.join(f'{x:g}' for x in summary['pixel_sizes'])} Å")
    out.print(f"box            {', '.join(map(str, summary['boxes']))} px")
    groups = ", ".join(f"{g}: {c}" for g, c in summary["optics_groups"].items())
    out.print(f"optics groups  {groups}")
    out.print(f"field groups   {', '.join(summary['field_groups'])}")
    flags = [name for name in ("alignments", "ctf", "helical") if summary[f"has_{name}"]]
    out.print(f"present        {', '.join(flags) or '-'}")
    problems = summary["stack_problems"]
    bad = {problem["stack"] for problem in problems}
    out.print(f"stacks         {summary['stacks']} referenced, {summary['stacks'] - len(bad)} "
              f"readable, {len(bad)} with problems")
    for problem in problems[:20]:
        out.print(f"  {problem['kind']}: {problem['stack']}: {problem['message']}",
                  markup=False, highlight=False)
    if len(problems) > 20:
        out.print(f"  ... and {len(problems) - 20} more")
    out.print("ready          " + ("yes: every image can be read" if summary["ok"] else
                                   "no: fix the stacks above (exit status 2)"))


@app.command()
def convert(
    file: Input,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .star or .cs.")],
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    voltage: Voltage = None,
    cs: SphericalAberration = None,
    amplitude_contrast: AmplitudeContrast = None,
) -> None:
    """Convert .cs (+passthrough) to RELION 3.1 .star, or .star to .cs, keeping 2D alignments
    (psi = degrees(pose), origins = shift), 3D alignments (alignments3D/pose rotation vector
    <-> rlnAngleRot/Tilt/Psi), classes (+1 / -1), optics groups, CTF, uids (rlnCsPluginUid),
    coordinates and helical fields; no alignment is written that the input lacks.
    Stack paths are copied as written (a leading '>' is removed)."""
    from csplugin.core.native import notes, save_particles
    from csplugin.core.particles import open_particles
    from csplugin.outputs.directory import single_file

    not_an_input([output], file, passthrough)
    with single_file(output, overwrite=overwrite):  # checked and locked first; written atomically
        table = open_particles(file, passthrough, project_dir)
        save_particles(table, output, voltage=voltage, cs=cs,
                       amplitude_contrast=amplitude_contrast)
    for note in notes(table, output.suffix):
        err.print(f"note: {note}", markup=False, highlight=False)
    err.print(f"wrote {output}", markup=False)


@app.command("export-aligned")
def export_aligned_cmd(
    file: Input,
    outdir: OutDir,
    classes: Classes = None,
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    interpolation: Interpolation = "cubic",
    float16: Annotated[bool, typer.Option("--float16",
                                          help="Write float16 (mode 12) stacks.")] = False,
    particles_per_stack: Annotated[int, typer.Option(min=1,
                                                     help="Images per output stack.")] = 10_000,
    voltage: Voltage = None,
    cs: SphericalAberration = None,
    amplitude_contrast: AmplitudeContrast = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Write the particles with their stored in-plane rotation and shift applied, in one
    resampling step: the aligned image is A(q) = P(R(-θ)q - s), i.e. RELION's
    relion_stack_create --apply_transformation with psi = θ and origin = s.

    Outputs in OUTDIR: particles_aligned_NNNN.mrcs (voxel size = particle pixel size),
    particles.star (RELION 3.1) and particles.cs (cryoSPARC) with psi/origins and
    alignments2D/pose/shift set to 0 and every other field kept.

    Path rule: particles.star names the stacks relative to the current directory (run
    RELION from here) when OUTDIR is below it, else by absolute path; particles.cs names
    them relative to OUTDIR (give OUTDIR as cryoSPARC Import Particles' particle data path).
    """
    from csplugin.app.dask import connect
    from csplugin.core.particles import open_particles
    from csplugin.jobs.export_aligned import export_aligned

    not_an_input([outdir / "particles.star", outdir / "particles.cs"], file, passthrough)
    table = open_particles(file, passthrough, project_dir).select_classes(parse_classes(classes))
    not_an_input(list(outdir.glob("particles_aligned_*.mrcs")), *table.particles["stack"].unique())
    with connect(scheduler, workers) as runner, progress_bar(quiet, "aligning",
                                                             len(table)) as advance:
        result = export_aligned(table, outdir, interpolation=interpolation, float16=float16,
                                particles_per_stack=particles_per_stack, overwrite=overwrite,
                                progress=advance, runner=runner, voltage=voltage, cs=cs,
                                amplitude_contrast=amplitude_contrast)
    err.print(f"wrote {result.particles} aligned particles in {len(result.stacks)} stack(s), "
              f"{result.star} and {result.cs}", markup=False)


@app.command()
def demo(
    outdir: Annotated[Path, typer.Argument(
        help="Where to write the demo job and results.")] = Path("csplugin_demo"),
    n_per_class: Annotated[int, typer.Option(min=1, help="Particles per class (3 classes).")] = 300,
    box: Annotated[int, typer.Option(min=16, max=1024, help="Box size in pixels.")] = 128,
    quiet: Quiet = False,
) -> None:
    """Make a small synthetic 2D-classification job with known alignments (cryoSPARC
    project + RELION .star) and run csplugin's jobs on it, checking the results against
    the truth: each check prints PASS or FAIL with its threshold, and the command exits
    with status 1 when any check fails."""
    from csplugin.jobs.demo import Check, run_demo

    checks: list[Check] = []
    for line in run_demo(outdir, n_per_class=n_per_class, box=box, quiet=quiet):
        if isinstance(line, Check):
            checks.append(line)
            out.print(f"  [{'green' if line.passed else 'red'}]{line}[/]", highlight=False)
        else:
            out.print(line, highlight=False)
    failed = [c for c in checks if not c.passed]
    out.print(f"demo: {len(checks) - len(failed)} of {len(checks)} checks passed"
              + ("" if not failed else f"; FAILED: {', '.join(c.what for c in failed)}"))
    if failed:
        raise typer.Exit(1)


@app.command("power-spectrum")
def power_spectrum_cmd(
    file: Input,
    outdir: OutDir,
    classes: Classes = None,
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    pad: Annotated[int, typer.Option(min=1, max=4, help="FFT padding factor (1 or 2; 2 samples the "
                                          "spectrum finely enough to rotate it well).")] = 2,
    mask: Annotated[bool, typer.Option(help="Soft circular mask (radius 0.45 N, cosine edge "
                                            "0.05 N) against box-edge streaks.")] = True,
    normalize: Annotated[bool, typer.Option(help="Scale each image to mean 0, sigma 1 "
                                                 "before the FFT.")] = True,
    power: Annotated[bool, typer.Option("--power/--amplitude", help="Average |F|² (power; "
                                        "HILL, SPRING) or |F| (amplitude; PyHI fits Bessel "
                                        "functions to amplitudes).")] = True,
    log: Annotated[bool, typer.Option("--log/--linear", help="Write log10(1 + P/median) "
                                      "instead of linear values (for viewers only: HILL "
                                      "log-scales its input itself, so give it --linear).")
                   ] = False,
    crop_resolution: Annotated[Optional[float], typer.Option(callback=positive,
        help="Crop the spectra at this resolution (Å); the header pixel size becomes "
             "resolution/2 so the edge still reads as Nyquist.")] = None,
    suppress_detector_lines: Annotated[bool, typer.Option(
        "--suppress-detector-lines/--keep-detector-lines",
        help="Mask the kx=0 and ky=0 lines of each unrotated spectrum (camera-fixed "
             "artefacts) before rotating; other particles fill them in.")] = True,
    axis: Annotated[str, typer.Option(help="'vertical' (default; HILL, PyHI and SPRING all "
                                      "want it: layer lines are rows), 'horizontal' (RELION "
                                      "display, helicon denovo3D) or 'class' (keep the 2D "
                                      "class frame): turn each class so its helical axis "
                                      "lies that way.")] = "vertical",
    mask_shape: Annotated[str, typer.Option(help="With --mask: 'circle' (radius 0.45 N) or "
                                            "'filament' (a soft rectangle --filament-width Å "
                                            "wide along the turned axis, 0.9 N long).")
                          ] = "circle",
    filament_width: Annotated[Optional[float], typer.Option(
        callback=positive,
        help="Width (Å) of the filament mask (--mask-shape filament).")] = None,
    half_sets: Annotated[bool, typer.Option(
        help="Also write the spectra of two half sets split by filament (never by segment) "
             "and judge each layer line by their agreement.")] = True,
    index: Annotated[bool, typer.Option(
        help="Detect layer lines and rank helical symmetry candidates per class "
             "(layer_lines.csv, helical_candidates.csv).")] = True,
    helix_radius: Annotated[Optional[str], typer.Option(
        help="Radius range MIN-MAX (Å) of the helix's subunits for the indexing, e.g. "
             "'30-60'; default: from the width of each class average.")] = None,
    max_csym: Annotated[int, typer.Option(min=1, help="Largest cyclic symmetry Cn tried by "
                                          "the indexing.")] = 6,
    display_resolution: Annotated[Optional[float], typer.Option(
        callback=positive,
        help="Resolution (Å) at the edge of the displayed spectra in the PNGs; default: "
             "just beyond the last layer line found.")] = None,
    axis_angle: Annotated[Optional[str], typer.Option(
        help="Helical axis per class, degrees from +x towards +y, e.g. '0:12.5,3:-40' "
             "(class numbers in the input's numbering); default: estimated.")] = None,
    class_averages: Annotated[Optional[Path], typer.Option(
        help="Stored class averages for the axis estimate (cryoSPARC J##_class_averages.mrc "
             "or RELION _classes.mrcs); default: the average of each class's aligned "
             "particles (the one written to class_averages.mrcs).")] = None,
    psi_bin: Annotated[float, typer.Option(callback=positive, max=180,
                                            help="Width of the psi bins (degrees).")] = 0.5,
    scheduler: Scheduler = None,
    workers: Workers = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Averaged power spectra of the aligned particles, per class and pooled, for helical
    indexing: the incoherent average of |F|² (not the spectrum of the class average).

    Writes ps_class{k}.mrc (k in the input's numbering), ps_all.mrc and ps_camera_frame.mrc
    (the unrotated average, which shows detector-fixed lines): float32, full plane, zero
    frequency at (N//2, N//2), header pixel size such that the edge is Nyquist; a PNG of
    each on axes in 1/Å; meridian/equator/radial profiles as CSV and PNG; summary.json.
    For helical indexing also ps_classes.mrcs (all class spectra, order in summary.json
    "stack_order"), ps_classes_half1/2.mrcs (half sets split by filament),
    class_averages.mrcs (turned and centred like the spectra), layer_lines.csv,
    helical_candidates.csv and index.html. Tools: HILL wants --power --linear --axis
    vertical (the defaults); PyHI --amplitude; SPRING power, vertical.
    """
    from csplugin.core.particles import open_particles
    from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra

    if axis not in ("class", "vertical", "horizontal"):
        raise InputError(None, f"--axis {axis!r} is not one of class, vertical, horizontal",
                         "choose --axis class, vertical or horizontal")
    if mask_shape not in ("circle", "filament"):
        raise InputError(None, f"--mask-shape {mask_shape!r} is not circle or filament",
                         "choose --mask-shape circle or filament")
    if (mask_shape == "filament") != (filament_width is not None) or (
            filament_width is not None and (filament_width <= 0 or not mask)):
        raise InputError(None, "--mask-shape filament and --filament-width go together "
                         "(with --mask, width > 0)",
                         "give both, e.g. --mask-shape filament --filament-width 150")
    radius = parse_range(helix_radius, "--helix-radius")
    options = SpectrumOptions(pad=pad, mask=mask, normalize=normalize,
                              quantity="power" if power else "amplitude", log=log,
                              crop_resolution=crop_resolution,
                              suppress_detector_lines=suppress_detector_lines,
                              psi_bin_deg=psi_bin, axis=axis,  # type: ignore[arg-type]
                              filament_width=filament_width, half_sets=half_sets, index=index,
                              helix_radius=radius, max_csym=max_csym,
                              display_resolution=display_resolution)
    from csplugin.app.dask import connect

    table = open_particles(file, passthrough, project_dir).select_classes(parse_classes(classes))
    with connect(scheduler, workers) as runner, progress_bar(quiet, "spectra",
                                                             len(table)) as advance:
        result = power_spectra(table, outdir, options, class_averages=class_averages,
                               axis_angles=parse_angles(axis_angle), overwrite=overwrite,
                               progress=advance, runner=runner)
    counts = ", ".join(f"{k}: {c}" for k, c in result.classes.items())
    err.print(f"wrote spectra of {sum(result.classes.values()) or 'all'} particles "
              f"(classes {counts or '-'}) to {result.outdir}", markup=False)
    for k, angle in result.axis_angles_deg.items():
        out.print(f"class {k}: helical axis {angle:.2f}° (from +x towards +y)", highlight=False)


@app.command("class-averages")
def class_averages_cmd(
    file: Input,
    outdir: OutDir,
    classes: Classes = None,
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    stacker: Annotated[str, typer.Option(
        help="'mean' (one streaming pass), 'median', 'sigma-rejection' or 'winsorized' "
             "(order statistics: each class is spilled once to a temporary file in OUTDIR "
             "and stacked in pixel tiles).")] = "mean",
    sigma: Annotated[float, typer.Option(callback=positive,
                                         help="sigma-rejection: reject beyond this many "
                                              "standard deviations.")] = 3.0,
    percentile: Annotated[float, typer.Option(callback=fraction,
                                              help="winsorized: fraction clipped at each "
                                                   "end, in [0, 0.5).")] = 0.1,
    weights: Annotated[str, typer.Option(
        help="'none' or 'posterior' (alignments2D/class_posterior, "
             "rlnMaxValueProbDistribution).")] = "none",
    ctf: Annotated[str, typer.Option(
        help="'none', 'phase-flip' (multiply each aligned particle's FT by the sign of its "
             "CTF) or 'wiener' (Σ w CTF F / (Σ w CTF² + 1/SNR); mean only).")] = "none",
    wiener_snr: Annotated[Optional[float], typer.Option(callback=positive,
        help="Per-particle SNR of the Wiener filter (default: estimated per class from the "
             "FRC of two half-sets).")] = None,
    invert_contrast: Annotated[bool, typer.Option("--invert-contrast",
                                                  help="Negate the averages.")] = False,
    interpolation: Interpolation = "cubic",
    compare: Annotated[Optional[Path], typer.Option(
        help="Class averages of the same job (cryoSPARC J##_class_averages.mrc or RELION "
             "_classes.mrcs) to correlate with, slice = 0-based class index; writes "
             "compare.csv.")] = None,
    select: Annotated[Optional[str], typer.Option(
        help="Rank the classes and write them best first: 'top' (class order), 'random' "
             "(seed 0), 'neighbor-variance' / 'distance' (ascending variance / mean of the "
             "members' leave-one-out distances to their class; two extra passes), "
             "'global-variance' / 'global-snr' (descending variance / banded SNR of each "
             "average). Default: all classes in ascending class number.")] = None,
    repulsion: Annotated[Optional[int], typer.Option(min=0,
        help="With --select: greedy repulsion excluding each kept class's first K members "
             "(stored 2D classes are disjoint, so this removes none of them).")] = None,
    keep: Annotated[Optional[int], typer.Option(
        help="With --select: write only the first N selected classes.")] = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Rebuild the class averages from the stored alignments: each class's particles are
    aligned as export-aligned does (A(q) = P(R(-θ)q - s)) and stacked.

    With --select, the same outputs list the selected classes best first (slice i = i-th
    selected) with the selector's score (rlnClassSelectionScore, selection/score).

    Outputs in OUTDIR: class_averages.mrcs (slice i = i-th class in ascending class number,
    voxel size = pixel size), class_averages.cs (cryoSPARC class-averages layout, plus
    alignments2D/class 0-based and alignments2D/num_particles), class_averages.star (RELION
    data_model_classes with rlnClassNumber 1-based, rlnClassDistribution and
    rlnClassParticleCount) and class_averages.png (montage with class numbers as in IN and
    particle counts).
    """
    from csplugin.core.particles import open_particles
    from csplugin.jobs.class_averages import class_averages

    table = open_particles(file, passthrough, project_dir).select_classes(parse_classes(classes))
    if select is not None and (scheduler is not None or workers is not None):
        raise InputError(None, "--select runs in this process", "drop --scheduler/--workers")
    if select is not None:
        from csplugin.averaging.selection import particles_to_average, selection_source
        from csplugin.jobs.class_averages import selected_class_averages

        source = selection_source(table, select, repulsion=repulsion, stacker=stacker,
                                  sigma=sigma, percentile=percentile, weights=weights, ctf=ctf,
                                  wiener_snr=wiener_snr, interpolation=interpolation,
                                  spill_dir=outdir)
        with progress_bar(quiet, "averaging", particles_to_average(source, keep)) as advance:
            saved = selected_class_averages(source, outdir, keep=keep, compare=compare,
                                            invert_contrast=invert_contrast,
                                            overwrite=overwrite, progress=advance)
        numbers = saved.labels + table.class_base
        for label, number in zip(saved.labels.tolist(), numbers):
            if label in source.averager.snr:
                err.print(f"class {number}: Wiener SNR {source.averager.snr[label]:.3g}")
        out.print("rank  class  particles  score")
        for rank, (number, count, score) in enumerate(zip(numbers, saved.counts, saved.scores)):
            out.print(f"{rank:>4}  {number:>5}  {count:>9}  {score:.4g}")
        err.print(f"wrote {len(saved.rows)} of {source.n} selected class averages "
                  f"({select}): {saved.mrcs}, {saved.cs.name}, {saved.star.name}, "
                  f"{saved.png.name}", markup=False)
        return
    if repulsion is not None or keep is not None:
        raise InputError(None, "--repulsion and --keep rank classes", "add --select")
    from csplugin.app.dask import connect

    total = int((table.particles["class_index"] >= 0).sum())
    with connect(scheduler, workers) as runner, progress_bar(quiet, "averaging", total) as advance:
        result = class_averages(
            table, outdir, stacker=stacker, sigma=sigma, percentile=percentile, weights=weights,
            ctf=ctf, wiener_snr=wiener_snr, invert_contrast=invert_contrast,
            interpolation=interpolation, compare=compare, overwrite=overwrite, progress=advance,
            runner=runner)
    if result.snr is not None:
        for number, snr in zip(result.classes, result.snr):
            err.print(f"class {number}: Wiener SNR {snr:.3g}")
    if result.comparison is not None:
        out.print("class  particles  correlation")
        for row in result.comparison.itertuples(index=False):
            out.print(f"{row[0]:>5}  {row[2]:>9}  {row[3]:>11.4f}")
    err.print(f"wrote {len(result.classes)} class averages of {int(result.counts.sum())} "
              f"particles: {result.mrcs}, {result.cs.name}, {result.star.name}, "
              f"{result.png.name}" + (f", {result.compare_csv.name}" if result.compare_csv else ""),
              markup=False)


@app.command()
def classify(
    file: Input,
    outdir: OutDir,
    n_nbor: Annotated[int, typer.Option(min=2,
        help="Neighbours per particle in the network, the particle itself included.")] = 10,
    n_classes: Annotated[Optional[int], typer.Option(
        "--n-classes", min=1, help="Also partition the particles into K classes (reference-free "
                          "2D classification of the denoised network means) and write them "
                          "with in-plane angles as particles.star / particles.cs.")] = None,
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    fspca_components: Annotated[int, typer.Option(min=1,
        help="Most steerable-PCA components kept above the noise.")] = 400,
    bispectrum_components: Annotated[int, typer.Option(min=1,
        help="Dimension of the invariant (bispectrum) features.")] = 150,
    diffusion: Annotated[bool, typer.Option(
        help="Rank neighbours by vector diffusion over the alignment graph (more accurate "
             "at low SNR) instead of the pairwise alignment distance.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the randomized steps.")] = 0,
    voltage: Voltage = None,
    cs: SphericalAberration = None,
    amplitude_contrast: AmplitudeContrast = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Classify particles without using any stored alignment or class (RIRClass2D): every
    particle gets its nearest neighbours among the others and their mirror images, found by
    rotation-invariant (bispectrum) features of a noise-whitened steerable PCA, rotational
    alignment and vector diffusion. Particles should be centred in the box.

    Outputs in OUTDIR: neighbors.npz (indices, reflections, distances, rotations: (n,
    n_nbor), 0-based input rows, column 0 = the particle; uid), summary.json and, with
    --n-classes K, particles.star / particles.cs: the input with class = new class (0-based
    .cs, 1-based .star, 0/1 = largest), psi/pose = in-plane angle into the class frame,
    origins/shift 0, so that class-averages can average them.
    """
    from csplugin.core.particles import open_particles
    from csplugin.jobs.classify import classify_particles

    not_an_input([outdir / "particles.star", outdir / "particles.cs"], file, passthrough)
    table = open_particles(file, passthrough, project_dir)
    result = classify_particles(table, outdir, n_nbor=n_nbor, n_classes=n_classes, seed=seed,
                                overwrite=overwrite, voltage=voltage, cs=cs,
                                amplitude_contrast=amplitude_contrast,
                                fspca_components=fspca_components,
                                bispectrum_components=bispectrum_components,
                                diffusion=diffusion)
    if not quiet:
        info = json.loads(result.summary.read_text())["classifier"]
        seconds = sum(info["seconds"].values())
        err.print(f"{info['particles']} particles of {info['box']} px: noise variance "
                  f"{info['noise_variance']:.4g}, {info['spca_components']} steerable "
                  f"components, {info['bispectrum_triplets']} invariant triplets -> "
                  f"{info['bispectrum_components']}; classified in {seconds:.1f} s")
    written = [result.neighbors.name, result.summary.name]
    if result.class_sizes is not None:
        sizes = result.class_sizes
        err.print(f"{len(sizes)} classes of {min(sizes)} to {max(sizes)} particles")
        written += [result.star.name, result.cs.name]  # type: ignore[union-attr]
    err.print(f"wrote {', '.join(written)} to {outdir}", markup=False)


def main() -> None:
    """Console entry point: user errors print one line and exit with status 2; Ctrl-C and
    SIGTERM print one line saying what the output directory holds and exit with 130 / 143."""
    from csplugin.outputs.directory import interrupt_handlers

    try:
        with interrupt_handlers(final=True):
            app()
    except InputError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except SystemExit as exc:  # Typer turns KeyboardInterrupt into exit status 130
        cause = _interrupt_in(exc)
        if cause is None:
            raise
        _interrupted(cause)
    except OSError as exc:  # the system refused a read or write the checks could not foresee
        if _DEBUG["on"]:
            raise
        where = escape(f"{exc.filename}: " if exc.filename else "")
        err.print(f"[red]error:[/] {where}{escape(str(exc.strerror or exc))} (check the path, its "
                  "permissions and the free space; --debug shows the traceback)",
                  highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # a bug: one line, the traceback on request
        if _DEBUG["on"]:
            raise
        err.print(f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} -- a bug "
                  "in csplugin; run again with --debug for the traceback and report it",
                  highlight=False, soft_wrap=True)
        sys.exit(1)


def _interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind ``exc`` (its cause/context chain), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _interrupted(exc: KeyboardInterrupt) -> None:
    from csplugin.outputs.directory import Terminated, last_outcome

    term = isinstance(exc, Terminated)
    what = last_outcome() or "nothing written"
    with contextlib.suppress(Exception):
        err.print(f"interrupted ({'SIGTERM' if term else 'Ctrl-C'}): {what}", markup=False,
                  highlight=False, soft_wrap=True)
    sys.exit(143 if term else 130)
