"""csplugin's ``.cs`` outputs as cryoSPARC results: checks and cryosparc-tools External jobs.

Every ``.cs`` csplugin writes (``export-aligned``'s ``particles.cs``, ``class-averages``'
``class_averages.cs``, ``convert``'s output) is a numpy-encoded cryoSPARC dataset with
fixed-width byte strings, which :meth:`cryosparc.dataset.Dataset.load` reads as it is.
:func:`check_fields` states what cryoSPARC relies on for each kind of result; for the
``blob`` slot

==================  ========  =====================================================
``uid``             u8        unique per row
``blob/path``       string    stack path (csplugin writes it relative to the ``.cs``)
``blob/idx``        u4        0-based slice
``blob/shape``      u4 (2,)   ``[ny, nx]``
``blob/psize_A``    f4        pixel size, Å
``blob/sign``       f4        particles only: the input's, else -1 (what cryoSPARC's
                              Import Particles writes for unflipped data)
==================  ========  =====================================================

cryoSPARC names stacks relative to its *project directory*. :func:`load_for_project` rewrites
``blob/path`` that way (the outputs must lie inside the project, e.g. in an External job's
directory), and :func:`register_output` adds the result to a cryosparc-tools External job and
saves it; see ``docs/cryosparc.md`` for the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from csplugin.core.fields import Cs
from formats import InputError

if TYPE_CHECKING:
    from cryosparc.controllers.job import ExternalJobController
    from cryosparc.dataset import Dataset

Kind = Literal["particle", "template"]
#: Slots (field prefixes) csplugin writes that cryoSPARC knows by these names.
PARTICLE_SLOTS: tuple[str, ...] = ("blob", "ctf", "alignments2D", "location", "filament")
TEMPLATE_SLOTS: tuple[str, ...] = ("blob",)
#: Required fields -> (numpy kind, itemsize or 0 for strings, shape) per result kind.
_BLOB: dict[str, tuple[str, int, tuple[int, ...]]] = {
    "uid": ("u", 8, ()), Cs.BLOB_PATH: ("S", 0, ()), Cs.BLOB_IDX: ("u", 4, ()),
    Cs.BLOB_SHAPE: ("u", 4, (2,)), Cs.BLOB_PSIZE: ("f", 4, ()),
}
REQUIRED: dict[str, dict[str, tuple[str, int, tuple[int, ...]]]] = {
    "particle": {**_BLOB, Cs.BLOB_SIGN: ("f", 4, ())},
    "template": dict(_BLOB),
}


def check_fields(data: np.ndarray, kind: Kind, source: str | Path = "dataset") -> None:
    """Check a structured array (as ``np.load`` reads a ``.cs``) against :data:`REQUIRED`.

    Raises
    ------
    InputError
        A required field is missing or has the wrong type or shape, or ``uid`` repeats.
    """
    names = data.dtype.names or ()
    for name, (kind_code, size, shape) in REQUIRED[kind].items():
        if name not in names:
            raise InputError(source, f"has no field '{name}' ({kind} result)",
                             "write it with csplugin export-aligned / class-averages / convert")
        field = data.dtype[name]
        base = field.base
        if base.kind != kind_code or (size and base.itemsize != size) or field.shape != shape:
            raise InputError(source, f"field '{name}' is {field}, cryoSPARC expects "
                             f"{kind_code}{size or ''}{list(shape) or ''}", "")
    if len(np.unique(data["uid"])) != len(data):
        raise InputError(source, "repeats uids", "give every row its own uid")


def load_for_project(cs_path: str | Path, project_dir: str | Path) -> Dataset:
    """Load a csplugin ``.cs`` with ``blob/path`` relative to a cryoSPARC project directory.

    Parameters
    ----------
    cs_path
        A ``.cs`` written by csplugin; relative ``blob/path`` start from its directory.
    project_dir
        The cryoSPARC project directory (``project.dir()`` in cryosparc-tools) as seen from
        this machine.

    Raises
    ------
    InputError
        A stack that does not exist or lies outside ``project_dir``.
    """
    from cryosparc.dataset import Dataset

    cs_path, project = Path(cs_path), Path(project_dir).absolute()
    dataset = Dataset.load(str(cs_path))
    paths = np.asarray(dataset[Cs.BLOB_PATH], dtype=str)
    rewritten: dict[str, str] = {}
    for text in np.unique(paths):
        stack = Path(text.lstrip(">"))
        stack = stack if stack.is_absolute() else (cs_path.parent / stack).absolute()
        if not stack.is_file():
            raise InputError(stack, f"stack not found (referenced by {cs_path})",
                             "keep the stacks beside the .cs that csplugin wrote")
        try:
            rewritten[text] = stack.relative_to(project).as_posix()
        except ValueError:
            raise InputError(stack, f"is outside the cryoSPARC project {project}",
                             "write the csplugin outputs inside the project directory, e.g. "
                             "in the External job's directory (job.dir())") from None
    dataset[Cs.BLOB_PATH] = np.array([rewritten[p] for p in paths], dtype=object)
    return dataset


def register_output(job: ExternalJobController, cs_path: str | Path, project_dir: str | Path,
                    kind: Kind = "particle", name: str | None = None,
                    title: str | None = None) -> Dataset:
    """Add a csplugin ``.cs`` to a cryosparc-tools External job as an output, and save it.

    Parameters
    ----------
    job
        ``project.create_external_job(...)`` (a running job: use inside ``job.run()``).
    cs_path
        ``particles.cs`` (``kind="particle"``) or ``class_averages.cs``
        (``kind="template"``), inside the project directory.
    project_dir
        The project directory as seen from this machine (``project.dir()`` when the
        file system is shared).
    name, title
        Output name (letters, digits, ``_``; default ``aligned_particles`` or
        ``class_averages``) and title.

    Returns
    -------
    Dataset
        What was saved: ``uid`` and the output's slots (:data:`PARTICLE_SLOTS` present in
        the file, or ``blob`` for templates) with project-relative ``blob/path``.
    """
    check_fields(np.load(cs_path, allow_pickle=False), kind, cs_path)
    dataset = load_for_project(cs_path, project_dir)
    wanted = PARTICLE_SLOTS if kind == "particle" else TEMPLATE_SLOTS
    slots = [s for s in wanted if s in dataset.prefixes()]
    dataset = dataset.filter_prefixes(slots)
    name = name or ("aligned_particles" if kind == "particle" else "class_averages")
    job.add_output(kind, name=name, slots=slots, title=title or name)
    job.save_output(name, dataset)
    return dataset
