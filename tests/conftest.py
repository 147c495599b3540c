"""Shared fixtures (real files in fixtures/real, a synthetic job with known answers) and the
two markers: ``relion`` (skipped, with the reason, where RELION's binaries are absent) and
``slow`` (run with ``-m slow``; the default run of the whole suite includes them)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from csplugin.synthetic import SyntheticJob, make_job

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real"

#: The RELION programs the oracle tests call; all come with Debian's ``relion`` package.
RELION_PROGRAMS = ("relion_stack_create", "relion_image_handler", "relion_star_handler")


def relion_available() -> bool:
    """Whether RELION 3.1+ is on PATH (``apt-get install relion``; ``.ci/run`` installs it)."""
    return all(shutil.which(program) for program in RELION_PROGRAMS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The one way to skip without RELION: tests marked ``relion``."""
    if relion_available():
        return
    skip = pytest.mark.skip(reason="RELION not installed (apt-get install relion); "
                                   ".ci/run installs it")
    for item in items:
        if "relion" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real() -> Path:
    """Directory of the real example files (see fixtures/real/README.md)."""
    return REAL


@pytest.fixture(scope="session")
def job(tmp_path_factory: pytest.TempPathFactory) -> SyntheticJob:
    """A noise-free synthetic 2D job: 3 classes x 40 particles, box 64, 2 stacks."""
    return make_job(tmp_path_factory.mktemp("job"), n_per_class=40, box=64, noise_sigma=0.0)


#: ``run_cli(*args) -> (exit status, stdout, stderr)`` of ``csplugin ARGS`` run in this process.
RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run ``csplugin ARGS`` in this process through its real entry point (``main``, with its
    error handling): returns (exit status, stdout, stderr)."""
    from csplugin.app import cli

    def run(*args: str) -> tuple[int, str, str]:
        argv, sys.argv = sys.argv, ["csplugin", *args]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            sys.argv = argv
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run

