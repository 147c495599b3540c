"""Aligned particle stacks: apply every particle's stored rotation and shift, write them out.

:func:`export_aligned` streams a :class:`~csplugin.core.particles.ParticleTable` through
:func:`csplugin.engines.transform.align_images` chunk by chunk and writes

* ``OUTDIR/particles_aligned_{k:04d}.mrcs``: the aligned images in table order, at most
  ``particles_per_stack`` per file (image-stack header, voxel size = particle pixel size);
* ``OUTDIR/particles.star`` (RELION 3.1) and ``OUTDIR/particles.cs`` (cryoSPARC, numpy
  encoding) describing them, with the alignment consumed (psi, origins, ``alignments2D/pose``
  and ``shift`` zero, helical psi priors moved into the aligned frame) and every other field
  of the input kept.

Path rule: in ``particles.star`` image names are relative to the current directory (where
RELION runs) when the output lies below it, else absolute; in ``particles.cs``
``blob/path`` is the stack's file name, relative to ``OUTDIR`` (give ``OUTDIR`` as the
"particle data path" of cryoSPARC's Import Particles; csplugin resolves it as the file's
own directory).

Memory is bounded by about two tasks of images (4 MiB each) per thread, whatever the number
of particles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csplugin.core import conventions as cv
from csplugin.core.images import Reader, check_stacks, reader
from csplugin.core.memory import scratch
from csplugin.core.native import check_writable, save_particles
from csplugin.core.particles import ParticleTable
from csplugin.core.threads import ordered_map
from csplugin.engines.transform import INTERPOLATIONS, align_images
from csplugin.jobs.runners import TaskRunner, task_table, used_stacks
from csplugin.outputs.directory import claim, transaction
from csplugin.outputs.paths import relion_path
from formats import InputError
from formats.mrc import Stack, StackWriter


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_aligned` wrote."""

    star: Path
    cs: Path
    stacks: list[Path]
    particles: int


@transaction()
def export_aligned(table: ParticleTable, outdir: str | Path, *, interpolation: str = "cubic",
                   float16: bool = False, particles_per_stack: int = 10_000,
                   chunk_size: int | None = None, overwrite: bool = False,
                   progress: Callable[[int], None] | None = None,
                   runner: TaskRunner | None = None, voltage: float | None = None,
                   cs: float | None = None, amplitude_contrast: float | None = None
                   ) -> ExportResult:
    """Write the aligned particles of ``table`` and their metadata to ``outdir``.

    Parameters
    ----------
    table
        Particles to export, in output order (select classes beforehand).
    outdir
        Output directory (created if needed).
    interpolation
        ``"cubic"`` (B-spline, default) or ``"linear"`` (RELION's bilinear); see
        :mod:`csplugin.engines.transform`.
    float16
        Write mode-12 (float16) stacks, half the size.
    particles_per_stack
        Maximum images per output stack.
    chunk_size
        Images read, aligned and written at a time (default: about 16 MiB of them).
    overwrite
        Replace existing ``particles.star``/``particles.cs``/stacks in ``outdir``.
    progress
        Called with the number of particles finished after each chunk.
    runner
        None: stream here (reading, aligning and writing overlap). Else each output stack
        is one task of ``runner`` (:func:`export_stack`, e.g. on a Dask cluster), with the
        same images bit for bit; the metadata is written here once every stack exists.
        If a task fails, every output stack of the run is removed.
    voltage, cs, amplitude_contrast
        kV, mm, fraction: for ``particles.star`` when the input has none (a ``.cs`` without
        its passthrough); never replace the input's values.
    """
    if interpolation not in INTERPOLATIONS:
        raise InputError(None, f"unknown interpolation {interpolation!r}",
                         f"choose one of {', '.join(INTERPOLATIONS)}")
    if particles_per_stack < 1:
        raise InputError(None, "--particles-per-stack must be at least 1", "give a positive number")
    outdir = Path(outdir)
    table.require_alignments()
    optics = {"voltage": voltage, "cs": cs, "amplitude_contrast": amplitude_contrast}
    check_writable(table, ".star", **optics)  # voltage/Cs/amplitude contrast, box: say so now
    check_writable(table, ".cs")
    stacks_in = check_stacks(table)
    pixel_size, box = table.pixel_size(), table.box()
    n = len(table)
    names = [outdir / f"particles_aligned_{k:04d}.mrcs"
             for k in range((n + particles_per_stack - 1) // particles_per_stack)]
    star_path, cs_path = outdir / "particles.star", outdir / "particles.cs"
    out = claim(outdir, [p.name for p in (star_path, cs_path, *names)], job="export-aligned",
                overwrite=overwrite, needs_bytes=n * (box * box * (2 if float16 else 4) + 1024))
    final = ExportResult(star_path, cs_path, names, n)
    # written into the staging directory; relion_path names the final place
    names = [out.stage(p.name) for p in names]
    star_path, cs_path = out.stage(star_path.name), out.stage(cs_path.name)

    p = table.particles
    angles, shifts = table.alignments()
    if runner is None:
        read = reader(table, stacks_in)
        for k, name in enumerate(names):
            rows = np.arange(k * particles_per_stack, min((k + 1) * particles_per_stack, n))
            _write_stack(name, rows, read, angles, shifts, box, pixel_size, float16,
                         interpolation, chunk_size, progress)
    else:
        blocks = [np.arange(k * particles_per_stack, min((k + 1) * particles_per_stack, n))
                  for k in range(len(names))]
        tasks = ((task_table(table, rows), used_stacks(table, rows, stacks_in),
                  name.absolute(), box, pixel_size, float16, interpolation, chunk_size)
                 for rows, name in zip(blocks, names))
        for _ in runner.map(export_stack, tasks, map(len, blocks), progress):
            pass
    stack_index = np.arange(n) % particles_per_stack
    which = np.arange(n) // particles_per_stack
    aligned = table.with_columns(
        stack=[str(names[w].absolute()) for w in which], stack_index=stack_index,
        angle=0.0, shift_x=0.0, shift_y=0.0,
        psi_prior=cv.residual_psi_prior(p["psi_prior"].to_numpy(), angles))
    save_particles(aligned.with_columns(
        image_path=[relion_path(names[w]) for w in which]), star_path, **optics)
    save_particles(aligned.with_columns(image_path=[names[w].name for w in which]), cs_path)
    return final  # committed by @transaction on return


def export_stack(table: ParticleTable, stacks: dict[str, Stack], name: Path, box: int,
                 pixel_size: float, float16: bool, interpolation: str,
                 chunk_size: int | None, progress: Callable[[int], None] | None = None) -> Path:
    """Write every particle of ``table``, aligned, as the stack ``name``: one export task.

    ``stacks`` holds (at least) the input stacks the table refers to, already checked.
    Returns ``name``. The stack appears atomically, so a task that dies leaves at most a
    hidden ``.name.*.part`` file in the job's staging directory
    (:mod:`csplugin.outputs.directory` removes it).
    """
    angles, shifts = table.alignments()
    _write_stack(name, np.arange(len(table)), reader(table, stacks), angles, shifts, box,
                 pixel_size, float16, interpolation, chunk_size, progress)
    return name


#: Bytes of images per task of a worker thread (read, aligned, written): 16 images of 256².
TASK_BYTES = 4 << 20


def _write_stack(name: Path, rows: np.ndarray, read: Reader, angles: np.ndarray,
                 shifts: np.ndarray, box: int, pixel_size: float, float16: bool,
                 interpolation: str, chunk_size: int | None,
                 progress: Callable[[int], None] | None) -> None:
    """Write the particles at table positions ``rows`` (``(k,)``; ``angles``/``shifts``
    indexed by position), aligned, as the stack ``name``.

    Every stage runs on every core: :func:`csplugin.core.threads.ordered_map` worker threads
    each take a run of ``chunk_size`` particles (default :data:`TASK_BYTES` of images), read
    it, align it (kernels at one thread) and write it at its own place in the stack
    (positioned writes; the header statistics are combined by the writer), so memory is
    about two tasks per thread."""
    size = chunk_size or max(1, TASK_BYTES // (4 * box * box))
    with StackWriter(name, len(rows), box, pixel_size, float16) as writer:
        def task(start: int) -> int:
            mine = rows[start:start + size]
            shape = (len(mine), box, box)
            raw = read(mine, scratch("raw", shape))
            writer.write(align_images(raw, angles[mine], shifts[mine], interpolation,
                                      out=scratch("aligned", shape)), start)
            return len(mine)

        for done in ordered_map(task, range(0, len(rows), size)):
            if progress is not None:
                progress(done)
