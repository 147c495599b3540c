"""The ``csplugin`` command line: thin Typer wrappers over the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

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
