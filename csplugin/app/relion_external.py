"""Run a csplugin job as a RELION External job (``csplugin_relion_external``).

RELION 3.1's *External* job runs its executable from the project directory as::

    EXE --o External/job012/ --in_parts Select/job011/particles.star --j 4 \\
        --LABEL1 VALUE1 ... [other arguments]

(one ``--LABEL VALUE`` pair per "Param" row of the job's *Params* tab, ``--j`` from the
*Running* tab; ``--continue`` when the job is continued; ``--pipeline_control JobDir/`` when
the pipeliner runs scheduled jobs: where the exit files go). This entry point takes

``--job``
    ``export-aligned``, ``class-averages`` or ``power-spectrum`` (required);
any other ``--LABEL VALUE``
    that command's own option, as ``csplugin JOB --help`` lists it (``classes 2,5``,
    ``interpolation linear``, ``stacker median``, ...). Labels may use ``_`` for ``-`` and
    may omit the leading dashes; switches take ``Yes``/``No`` (``mask No`` is ``--no-mask``,
    ``float16 Yes`` is ``--float16``), as RELION's Param rows always carry a value;
``--j``
    numba threads of the image maths (a Param ``workers N`` or ``scheduler ADDRESS`` runs
    the job's tasks on Dask instead, see :mod:`csplugin.app.dask`);

and writes, in the job directory ``--o``:

* the job's outputs (those of ``csplugin JOB -o JobDir``; existing outputs of an earlier
  run of this job are replaced, atomically);
* ``RELION_OUTPUT_NODES.star`` (``data_output_nodes``: ``_rlnPipeLineNodeName`` relative
  to the project, ``_rlnPipeLineNodeType``), which the pipeliner reads when the job
  succeeds, see :data:`OUTPUT_NODES`;
* last, an empty ``RELION_JOB_EXIT_SUCCESS``; or, on any error, no outputs, an empty
  ``RELION_JOB_EXIT_FAILURE``, a one-line message on stderr (RELION's ``run.err``) and exit
  status 2 (bad input or options) or 1 (a bug: with a traceback). When RELION's *Abort*
  button creates ``RELION_JOB_ABORT_NOW``, the job stops at its next chunk, removes its
  partial outputs and that file, and writes ``RELION_JOB_EXIT_ABORTED`` (exit status 3).

Node types (RELION 3.1 ``src/pipeline_jobs.h``; checked against ``relion_pipeliner`` 3.1.3,
which records an AutoPick reference input as 5 and an External particles input as 3):
``particles.star`` is ``NODE_PART_DATA`` (3); ``class_averages.star`` and, for
power-spectrum, ``power_spectra.star`` are ``NODE_2DREFS`` (5). RELION 3.1 has no node type
for single 2D images, so the spectra are listed in that table, one row per spectrum with
``rlnImageName`` and ``rlnReferenceImage`` = ``JobDir/ps_*.mrc`` (without ``N@``, which
RELION refuses for ``.mrc`` files), which RELION's image readers open.
"""

from __future__ import annotations

import _thread
import contextlib
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import pandas as pd

from csplugin.core.fields import Relion
from csplugin.outputs.directory import Terminated, claim, interrupt_handlers, transaction
from formats import InputError
from formats.atomic import atomic_output
from formats.star import write_star

if TYPE_CHECKING:
    from rich.console import Console

NODE_PART_DATA = 3
NODE_2DREFS = 5
SUCCESS = "RELION_JOB_EXIT_SUCCESS"
FAILURE = "RELION_JOB_EXIT_FAILURE"
ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
NODES_FILE = "RELION_OUTPUT_NODES.star"
#: Output node file and type of each job.
OUTPUT_NODES: dict[str, tuple[str, int]] = {
    "export-aligned": ("particles.star", NODE_PART_DATA),
    "class-averages": ("class_averages.star", NODE_2DREFS),
    "power-spectrum": ("power_spectra.star", NODE_2DREFS),
}
#: Inputs RELION may pass that csplugin has no use for.
_UNUSED_INPUTS = ("--in_movies", "--in_mics", "--in_coords", "--in_3dref", "--in_mask")
_TRUE = {"yes", "y", "true", "1", "on"}
_FALSE = {"no", "n", "false", "0", "off"}
#: Seconds between checks for RELION_JOB_ABORT_NOW.
ABORT_POLL = 1.0


@dataclass
class ExternalCall:
    """RELION's arguments, parsed.

    Attributes
    ----------
    job_dir
        ``--o``, as given (relative to the project directory, with a trailing ``/``).
    in_parts
        ``--in_parts``.
    job
        ``--job``: the csplugin command.
    threads
        ``--j`` (None when absent).
    options
        The command's own options as command-line tokens, e.g. ``["--classes", "2,5"]``.
    """

    job_dir: str
    in_parts: str
    job: str
    threads: int | None = None
    options: list[str] = field(default_factory=list)


class JobAborted(Exception):
    """RELION asked the job to stop (``RELION_JOB_ABORT_NOW``)."""


def parse_arguments(argv: list[str]) -> ExternalCall:
    """Split RELION's command line into its own arguments and the job's options.

    Raises
    ------
    InputError
        No ``--o``/``--in_parts``/``--job``, an unknown job, an input csplugin does not use,
        or a ``--LABEL`` without a value.
    """
    values: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--continue":
            i += 1
            continue
        if token in ("--o", "--in_parts", "--j", "--job", "--pipeline_control", *_UNUSED_INPUTS):
            if i + 1 >= len(argv):
                raise InputError(None, f"{token} needs a value", "check the External job's fields")
            if token in _UNUSED_INPUTS:
                raise InputError(None, f"csplugin uses only input particles, not {token}",
                                 "clear that input field of the External job")
            values[token], i = argv[i + 1], i + 2
            continue
        rest.append(token)
        i += 1
    for needed, where in (("--o", "the output directory"), ("--in_parts", "'Input particles'"),
                          ("--job", "a Param 'job' with value export-aligned, class-averages "
                                    "or power-spectrum")):
        if needed not in values:
            raise InputError(None, f"no {needed} argument", f"give {where}")
    job = values["--job"]
    if job not in OUTPUT_NODES:
        raise InputError(None, f"unknown --job {job!r}", f"choose one of {', '.join(OUTPUT_NODES)}")
    threads = None
    if "--j" in values:
        try:
            threads = int(values["--j"])
        except ValueError:
            raise InputError(None, f"--j {values['--j']!r} is not a number",
                             "give a number of threads") from None
    return ExternalCall(values["--o"], values["--in_parts"], job, threads,
                        command_options(job, rest))


def command_options(job: str, tokens: list[str]) -> list[str]:
    """RELION's ``--LABEL VALUE`` pairs as options of ``csplugin JOB``.

    Labels are matched against the command's own options (``_`` read as ``-``, leading
    dashes optional); a switch's value ``Yes``/``No`` selects its on or off form.

    Raises
    ------
    InputError
        An unknown option, a label without a value, ``-o``/``--outdir`` (the job directory
        is the output), or a switch whose value is not yes/no.
    """
    command = _typer_command().commands[job]  # type: ignore[attr-defined]
    switches: dict[str, tuple[str, str | None]] = {}  # option -> (on form, off form)
    takes_value: set[str] = set()
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option":
            continue
        if param.is_flag:
            on, off = param.opts[-1], (param.secondary_opts or [None])[0]
            for name in param.opts:
                switches[name] = (name, off)
            if off is not None:
                switches[off] = (off, on)
        else:
            takes_value.update(param.opts)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        label = "--" + tokens[i].lstrip("-").replace("_", "-")
        value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") \
            else None
        i += 1 if value is None else 2
        if label in ("--o", "--outdir"):
            raise InputError(None, f"{label} is set by RELION (the job directory)",
                             "remove that Param")
        if label in switches:
            on, off = switches[label]
            if value is None or value.lower() in _TRUE:
                out.append(on)
            elif value.lower() in _FALSE:
                if off is not None:
                    out.append(off)
            else:
                raise InputError(None, f"{label} takes Yes or No, not {value!r}",
                                 "set that Param's value to Yes or No")
        elif label in takes_value:
            if value is None:
                raise InputError(None, f"{label} needs a value", "fill in that Param's value")
            out += [label, value]
        else:
            raise InputError(None, f"csplugin {job} has no option {label}",
                             f"see `csplugin {job} --help` for its options")
    return out


def write_output_nodes(job_dir: str, nodes: list[tuple[str, int]],
                       into: Path | None = None) -> Path:
    """Write ``RELION_OUTPUT_NODES.star`` listing ``(file in job_dir, node type)``, into
    ``job_dir`` or the directory ``into`` (the job's staging directory)."""
    table = pd.DataFrame({"rlnPipeLineNodeName": [_node_name(job_dir, name) for name, _ in nodes],
                          "rlnPipeLineNodeType": np.array([t for _, t in nodes], np.int64)})
    path = Path(into or job_dir) / NODES_FILE
    write_star(path, {"output_nodes": table})
    return path


def write_spectra_table(job_dir: str, into: Path | None = None) -> Path:
    """Write ``power_spectra.star``: one row per ``ps_*.mrc`` of the job, as 2D references
    (the spectra and the table in ``job_dir``, or in the directory ``into``)."""
    names = sorted(p.name for p in Path(into or job_dir).glob("ps_*.mrc"))
    images = [_node_name(job_dir, n) for n in names]  # RELION refuses "1@x.mrc" (a 3D map)
    table = pd.DataFrame({Relion.IMAGE_NAME: images, Relion.REFERENCE_IMAGE: images})
    path = Path(into or job_dir) / OUTPUT_NODES["power-spectrum"][0]
    write_star(path, {"": table})
    return path


def _node_name(job_dir: str, name: str) -> str:
    """``job_dir`` joined to ``name`` as RELION writes node names (``External/job012/x``)."""
    return job_dir.rstrip("/") + "/" + name


@transaction()  # the job's outputs and node files replace the previous ones together
def run(call: ExternalCall) -> None:
    """Run the job in ``call.job_dir`` and write its output nodes (no exit files).

    The job directory is claimed here (:mod:`csplugin.outputs.directory`), so the job's
    own claim joins it: its outputs, ``power_spectra.star`` and ``RELION_OUTPUT_NODES.star``
    appear together, and RELION's files there (``run.out``, ``note.txt``, ...) are kept.
    """
    from csplugin.app import cli

    if call.threads is not None:
        import numba

        numba.set_num_threads(max(1, min(call.threads, numba.config.NUMBA_NUM_THREADS)))
    out = claim(call.job_dir, [], job=f"relion-{call.job}", overwrite=True)
    args = [call.job, call.in_parts, "-o", call.job_dir, *call.options, "--overwrite", "--quiet"]
    command = _typer_command()
    with _messages_to(cli.err, sys.stdout):  # RELION shows stderr as errors; these are not
        status = command.main(args=args, prog_name="csplugin", standalone_mode=False)
    if status == 130:  # Typer turns KeyboardInterrupt into this exit status
        raise KeyboardInterrupt
    if isinstance(status, int) and status != 0:
        raise RuntimeError(f"csplugin {call.job} exited with status {status}")
    node_file, node_type = OUTPUT_NODES[call.job]
    if call.job == "power-spectrum":
        write_spectra_table(call.job_dir, into=out.staging)
    write_output_nodes(call.job_dir, [(node_file, node_type)], into=out.staging)


def _typer_command() -> Any:
    """The ``csplugin`` command line as a click group (Typer's own click, or click)."""
    import typer.main

    from csplugin.app.cli import app

    return typer.main.get_command(app)


@contextlib.contextmanager
def _messages_to(console: Console, stream: TextIO) -> Iterator[None]:
    """Temporarily send a rich console's output to ``stream``."""
    old = console._file  # not .file, which resolves (and would then pin) sys.stdout/stderr
    console.file = stream
    try:
        yield
    finally:
        console._file = old


@contextlib.contextmanager
def abort_watch(job_dir: Path, poll: float | None = None) -> Iterator[threading.Event]:
    """Interrupt the main thread when ``job_dir/RELION_JOB_ABORT_NOW`` appears.

    The interruption arrives as :class:`KeyboardInterrupt` at the next Python instruction of
    the main thread (after the current chunk's compiled maths); the yielded event tells the
    caller that it was an abort. ``poll``: seconds between checks (default
    :data:`ABORT_POLL`).
    """
    poll = ABORT_POLL if poll is None else poll
    aborted, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(poll):
            if (job_dir / ABORT_NOW).exists():
                aborted.set()
                _thread.interrupt_main()
                return

    thread = threading.Thread(target=watch, name="relion-abort-watch", daemon=True)
    thread.start()
    try:
        yield aborted
    finally:
        done.set()
        thread.join()


def _touch(path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(b"")


def main(argv: list[str] | None = None) -> int:
    """Run RELION's call; return 0, 1 (a bug), 2 (bad input or options), 3 (aborted by
    RELION) or 130 (interrupted).

    Without ``--o`` (not a RELION call) nothing is written: the message goes to stderr.
    """
    from typer.exceptions import TyperException

    argv = sys.argv[1:] if argv is None else argv
    where = _value_of("--o", argv)
    if where is None:
        print("error: no --o argument (give the job directory, as RELION does)", file=sys.stderr)
        return 2
    job_dir = Path(where)
    markers = Path(_value_of("--pipeline_control", argv) or where)  # the exit files
    status, message = 0, ""
    try:
        for directory in (job_dir, markers):
            directory.mkdir(parents=True, exist_ok=True)
        for stale in (SUCCESS, FAILURE, ABORTED):
            (markers / stale).unlink(missing_ok=True)
        (job_dir / NODES_FILE).unlink(missing_ok=True)
        call = parse_arguments(argv)
        print(f"csplugin {call.job}: {call.in_parts} -> {call.job_dir}", flush=True)
        with abort_watch(markers) as aborted:
            try:
                run(call)
            except BaseException:  # the interrupt may arrive wrapped (click's Abort)
                if aborted.is_set():
                    raise JobAborted from None
                raise
    except JobAborted:
        status, message = 3, "aborted by the user (RELION_JOB_ABORT_NOW)"
    except Terminated:  # SIGTERM, e.g. scancel of the SLURM job RELION submitted
        status, message = 143, "error: terminated (SIGTERM); the job directory is unchanged"
    except KeyboardInterrupt:  # Ctrl-C where it was started by hand: still tell RELION
        status, message = 130, "error: interrupted"
    except InputError as exc:
        status, message = 2, f"error: {exc}"
    except TyperException as exc:  # the command line's usage errors (bad option values)
        status, message = 2, f"error: {getattr(exc, 'format_message', exc.__str__)()}"
    except OSError as exc:  # e.g. the job directory cannot be created
        status, message = 2, f"error: {exc}"
    except Exception:  # noqa: BLE001 (a bug: report it in full, still tell RELION)
        status, message = 1, "error: csplugin failed unexpectedly:\n" + traceback.format_exc()
    if status == 0:
        _touch(markers / SUCCESS)
        print("csplugin: done", flush=True)
        return 0
    print(message, file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        (job_dir / NODES_FILE).unlink(missing_ok=True)
        if status == 3:
            (markers / ABORT_NOW).unlink(missing_ok=True)
        _touch(markers / (ABORTED if status == 3 else FAILURE))
    return status


def _value_of(option: str, argv: list[str]) -> str | None:
    """The value following ``option`` in ``argv`` (None when absent)."""
    for i, token in enumerate(argv[:-1]):
        if token == option:
            return argv[i + 1]
    return None


def entry_point() -> None:
    """``csplugin_relion_external``: :func:`main` with its exit status (SIGTERM handled as
    Ctrl-C is, :func:`csplugin.outputs.directory.interrupt_handlers`)."""
    with interrupt_handlers(final=True):
        status = main()
    sys.exit(status)


if __name__ == "__main__":
    entry_point()
