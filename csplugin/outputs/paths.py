"""How written files name each other (a ``.star`` naming its stacks, a ``.cs`` its blobs)."""

from __future__ import annotations

from pathlib import Path


def relion_path(path: Path) -> str:
    """Relative to the current directory when below it (RELION's project layout), else absolute."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)
