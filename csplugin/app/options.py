"""The command line's shared parts: option types (each declared once, with its checks and
help), parsers of option values, the consoles and the progress bar."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from formats import InputError

err = Console(stderr=True, soft_wrap=True)  # a message is one line, whatever the width
out = Console(soft_wrap=True)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage error and that of the copy of Click which recent Typer versions vendor
    (``typer._click``, without a dependency on Click: Click may then be absent)."""
    found: list[type[Exception]] = []
    with contextlib.suppress(ImportError):
        from typer._click.exceptions import UsageError as vendored

        found.append(vendored)
    with contextlib.suppress(ImportError):
        from click.exceptions import UsageError

        found.append(UsageError)
    if not found:  # pragma: no cover - Typer without either
        raise ImportError("neither typer._click nor click is importable")
    return tuple(dict.fromkeys(found))


#: The usage errors that :class:`OneLineUsage` turns into one line.
_USAGE_ERRORS = _usage_errors()


class OneLineUsage(typer.core.TyperGroup):
    """The command group whose sub-commands' usage errors (an option out of range, a missing
    argument, an unknown command) are one :class:`InputError` line with exit 2, not Click's
    multi-line usage box."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201 (Click's own signature)
        try:
            return super().invoke(ctx)
        except _USAGE_ERRORS as exc:
            sub = getattr(exc, "ctx", None)
            command = sub.command_path if sub is not None else "csplugin"
            raise InputError(None, f"{command}: {exc.format_message()}",
                             f"see '{command} --help'") from None


def not_an_input(outputs: list[Path], *inputs: str | Path | None) -> None:
    """Refuse, before any work, an output that would replace one of the job's own input
    files (metadata or stacks): inputs are never modified, even with --overwrite."""
    given: dict[tuple[int, int], Path] = {}
    for path in inputs:
        with contextlib.suppress(OSError, TypeError):
            st = os.stat(path)
            given[(st.st_dev, st.st_ino)] = Path(path)
    for output in outputs:
        with contextlib.suppress(OSError):
            st = os.stat(output)
            if (st.st_dev, st.st_ino) in given:
                raise InputError(output, "is an input of this job and would be replaced by "
                                 "its output", "choose another output")


Input = Annotated[Path, typer.Argument(
    help="Particles: a cryoSPARC .cs (its J##_passthrough_particles.cs beside it is merged by "
         "uid) or a RELION .star (3.0, 3.1 or 5).", show_default=False)]


def positive(value: float | None) -> float | None:
    """Typer callback: a strictly positive number (or not given), checked before any work."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value} is not > 0")
    return value


def fraction(value: float) -> float:
    """Typer callback: a fraction in [0, 0.5)."""
    if not 0 <= value < 0.5:
        raise typer.BadParameter(f"{value} is not in [0, 0.5)")
    return value


OutDir = Annotated[Path, typer.Option(
    "-o", "--outdir", help="Output directory (created; locked while the job runs; the result "
                           "appears in it whole, see README 'Output directories').")]


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


Voltage = Annotated[Optional[float], typer.Option(
    min=1.0, help="kV, for a .star output whose input has no voltage (e.g. a .cs without its "
                  "passthrough); never replaces the input's.")]


SphericalAberration = Annotated[Optional[float], typer.Option(
    "--cs", min=0.0, help="Spherical aberration (mm), as --voltage.")]


AmplitudeContrast = Annotated[Optional[float], typer.Option(
    min=0.0, max=1.0, help="Amplitude contrast (fraction), as --voltage.")]


Interpolation = Annotated[str, typer.Option(
    help="'cubic': B-spline with exact prefilter (default; keeps high frequencies); "
         "'linear': bilinear, identical to relion_stack_create --apply_transformation.")]


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


Overwrite = Annotated[bool, typer.Option(help="Replace existing outputs in OUTDIR.")]


Scheduler = Annotated[Optional[str], typer.Option(
    help="Run the tasks (one per output stack, class or block of psi bins) on this Dask "
         "scheduler, e.g. tcp://node12:8786 from dask-jobqueue on SLURM; workers must see the "
         "same paths. Needs csplugin[dask].")]


Workers = Annotated[Optional[int], typer.Option(min=1,
    help="Run the tasks on a local Dask cluster of N processes (needs csplugin[dask]). "
         "Default: the plain local run.")]


@contextlib.contextmanager
def progress_bar(quiet: bool, what: str, total: int) -> Iterator[Callable[[int], None]]:
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
        if bar.live.is_started:
            bar.stop()


def parse_range(text: str | None, option: str) -> tuple[float, float] | None:
    """Parse ``"30-60"`` into ``(30.0, 60.0)`` (positive, MIN < MAX)."""
    if text is None:
        return None
    try:
        low, high = (float(x) for x in text.split("-"))
    except ValueError:
        raise InputError(None, f"{option} {text!r} is not MIN-MAX",
                         f"e.g. {option} 30-60") from None
    if not 0 < low < high:
        raise InputError(None, f"{option} {text!r} needs 0 < MIN < MAX", f"e.g. {option} 30-60")
    return low, high


def parse_angles(text: str | None) -> dict[int, float] | None:
    """Parse ``"0:12.5,3:-40"`` into ``{0: 12.5, 3: -40.0}``."""
    if text is None:
        return None
    try:
        return {int(k): float(v) for k, v in (part.split(":") for part in text.split(","))}
    except ValueError:
        raise InputError(None, f"--axis-angle {text!r} is not a list like '0:12.5,3:-40'",
                         "give class:degrees pairs separated by commas") from None
