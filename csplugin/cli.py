"""The ``csplugin`` command line: thin Typer wrappers over the Python API."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from formats import InputError

app = typer.Typer(
    name="csplugin",
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
err = Console(stderr=True)
out = Console(soft_wrap=True)

Input = Annotated[Path, typer.Argument(
    help="Particles: a cryoSPARC .cs (its J##_passthrough_particles.cs beside it is merged by "
         "uid) or a RELION .star (3.0, 3.1 or 5).", show_default=False)]
Passthrough = Annotated[Optional[Path], typer.Option(
    help="cryoSPARC passthrough .cs to merge by uid (default: J##_passthrough_particles.cs "
         "beside IN).")]
ProjectDir = Annotated[Optional[Path], typer.Option(
    help="Directory that relative stack paths start from (default: for .cs the cryoSPARC "
         "project directory, i.e. the parent of the job directory; for .star the current "
         "directory, as RELION; each falls back to the file's own directory).")]
Classes = Annotated[Optional[str], typer.Option(
    help="Classes to use, in the input's numbering (0-based for .cs, 1-based for .star), "
         "e.g. '0,3,5-7'. Default: all.")]


def parse_classes(text: str | None) -> list[int] | None:
    """Parse ``"1,3,5-7"`` into ``[1, 3, 5, 6, 7]`` (``None`` stays ``None``)."""
    if text is None:
        return None
    numbers: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            numbers += range(int(first), int(last or first) + 1)
    except ValueError:
        raise InputError(None, f"--classes {text!r} is not a list like '0,3,5-7'",
                         "give class numbers separated by commas, ranges with '-'") from None
    return numbers


@app.command()
def info(
    file: Input,
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Summarise a particle file: particles, classes and counts, pixel and box sizes, optics
    groups, which stacks exist and which are missing, and which field groups are present."""
    from csplugin.info import describe
    from csplugin.particles import open_particles

    summary = describe(open_particles(file, passthrough, project_dir))
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(f"[bold]{summary['file']}[/] ({summary['format']})")
    out.print(f"particles      {summary['particles']}")
    classes = summary["classes"]
    listing = ", ".join(f"{k}: {c}" for k, c in classes.items()) if classes else "none"
    out.print(f"classes        {len(classes)} ({summary['class_numbering']}): {listing}")
    out.print(f"pixel size     {', '.join(f'{x:g}' for x in summary['pixel_sizes'])} Å")
    out.print(f"box            {', '.join(map(str, summary['boxes']))} px")
    groups = ", ".join(f"{g}: {c}" for g, c in summary["optics_groups"].items())
    out.print(f"optics groups  {groups}")
    missing = summary["missing_stacks"]
    out.print(f"stacks         {summary['stacks']} referenced, {len(missing)} missing")
    for path in missing[:20]:
        out.print(f"  missing: {path}")
    if len(missing) > 20:
        out.print(f"  ... and {len(missing) - 20} more")
    out.print(f"field groups   {', '.join(summary['field_groups'])}")
    flags = [name for name in ("alignments", "ctf", "helical") if summary[f"has_{name}"]]
    out.print(f"present        {', '.join(flags) or '-'}")


@app.command()
def convert(
    file: Input,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .star or .cs.")],
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Convert .cs (+passthrough) to RELION 3.1 .star, or .star to .cs, keeping alignments
    (psi = degrees(pose), origins = shift), classes (+1 / -1), CTF and helical fields.
    Stack paths are copied as written (a leading '>' is removed)."""
    from csplugin.particles import open_particles, save_particles

    _refuse_existing(output, overwrite)
    save_particles(open_particles(file, passthrough, project_dir), output)
    err.print(f"wrote {output}")


Interpolation = Annotated[str, typer.Option(
    help="'cubic': B-spline with exact prefilter (default; keeps high frequencies); "
         "'linear': bilinear, identical to relion_stack_create --apply_transformation.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Overwrite = Annotated[bool, typer.Option(help="Replace existing outputs in OUTDIR.")]


@app.command("export-aligned")
def export_aligned_cmd(
    file: Input,
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Output directory.")],
    classes: Classes = None,
    passthrough: Passthrough = None,
    project_dir: ProjectDir = None,
    interpolation: Interpolation = "cubic",
    float16: Annotated[bool, typer.Option("--float16", help="Write float16 (mode 12) stacks.")] = False,
    particles_per_stack: Annotated[int, typer.Option(help="Images per output stack.")] = 10_000,
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
    from csplugin.export import export_aligned
    from csplugin.particles import open_particles

    table = open_particles(file, passthrough, project_dir).select_classes(parse_classes(classes))
    with _progress(quiet, "aligning", len(table)) as advance:
        result = export_aligned(table, outdir, interpolation=interpolation, float16=float16,
                                particles_per_stack=particles_per_stack, overwrite=overwrite,
                                progress=advance)
    err.print(f"wrote {result.particles} aligned particles in {len(result.stacks)} stack(s), "
              f"{result.star} and {result.cs}")


@contextlib.contextmanager
def _progress(quiet: bool, what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (on stderr) advanced by the yielded callback."""
    if quiet:
        yield lambda _: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("particles"), TimeElapsedColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=err)
    task = bar.add_task(what, total=total)

    def advance(k: int) -> None:  # the bar appears with the first finished chunk
        if not bar.live.is_started:
            bar.start()
        bar.advance(task, k)

    try:
        yield advance
    finally:
        bar.stop()


@app.command()
def demo(
    outdir: Annotated[Path, typer.Argument(help="Where to write the demo job and results.")] = Path("csplugin_demo"),
    n_per_class: Annotated[int, typer.Option(help="Particles per class (3 classes).")] = 300,
    box: Annotated[int, typer.Option(help="Box size in pixels.")] = 128,
    quiet: Quiet = False,
) -> None:
    """Make a small synthetic 2D-classification job with known alignments (cryoSPARC
    project + RELION .star) and run csplugin's jobs on it, checking the results against
    the truth."""
    from csplugin.demo import run_demo

    for line in run_demo(outdir, n_per_class=n_per_class, box=box, quiet=quiet):
        out.print(line)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(path, "already exists", "pass --overwrite to replace it")


def main() -> None:
    """Console entry point: user errors print one line and exit with status 2."""
    try:
        app()
    except InputError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
