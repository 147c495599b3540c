"""The one exception type for bad input files."""

from __future__ import annotations

import re
from pathlib import Path

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def _one_line(text: str) -> str:
    """``text`` with line breaks (e.g. from a quoted library error) folded into spaces."""
    return _LINE_BREAKS.sub(" ", text).strip()


def brief(exc: BaseException, limit: int = 200) -> str:
    """A quoted library error for a message: type, one line, at most ``limit`` characters."""
    text = _one_line(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= limit else text[:limit - 3] + "..."


class InputError(Exception):
    """A user-facing problem with an input or output file.

    The message is one line: which file, what is wrong, and what to do about it.
    Command-line entry points print it without a traceback and exit with status 2.

    Parameters
    ----------
    path
        The file (or directory) the problem is about.
    problem
        What is wrong, e.g. ``"has no field 'blob/idx'"``.
    fix
        What the user can do, e.g. ``"pass the particles .cs of a 2D classification job"``.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem = _one_line(problem)
        self.fix = fix = _one_line(fix)
        where = f"{self.path}: " if self.path is not None else ""
        tail = f" ({fix})" if fix else ""
        super().__init__(f"{where}{problem}{tail}")

    def __reduce__(self) -> tuple[type, tuple[Path | None, str, str]]:
        """Pickle by the constructor's arguments (it crosses process boundaries in Dask)."""
        return type(self), (self.path, self.problem, self.fix)
