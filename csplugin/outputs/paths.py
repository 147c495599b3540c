"""How written files name each other (a ``.star`` naming its stacks, a ``.cs`` its blobs)."""

from __future__ import annotations

from pathlib import Path

from csplugin.outputs.directory import final_path


def relion_path(path: Path) -> str:
    """Relative to the current directory when below it (RELION's project layout), else absolute.

    A path in the staging directory of a job's output directory names the file where it will
    be (:func:`csplugin.outputs.directory.final_path`)."""
    absolute = final_path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)
