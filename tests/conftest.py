"""Shared fixtures: real files in fixtures/real and a synthetic job with known answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from csplugin.synthetic import SyntheticJob, make_job

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real"


@pytest.fixture(scope="session")
def real() -> Path:
    """Directory of the real example files (see fixtures/real/README.md)."""
    return REAL


@pytest.fixture(scope="session")
def job(tmp_path_factory: pytest.TempPathFactory) -> SyntheticJob:
    """A noise-free synthetic 2D job: 3 classes x 40 particles, box 64, 2 stacks."""
    return make_job(tmp_path_factory.mktemp("job"), n_per_class=40, box=64, noise_sigma=0.0)


def relion_available() -> bool:
    return shutil.which("relion_stack_create") is not None


requires_relion = pytest.mark.skipif(
    not relion_available(),
    reason="RELION not installed (apt-get install relion); .ci/run installs it",
)
