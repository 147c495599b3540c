"""The house rules, checked: layers (import-linter contracts in pyproject.toml), lint (ruff
with the rule sets configured there), one idea per module (at most 600 lines)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "engines", "outputs", "averaging", "jobs", "app")
MAX_LINES = 600


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool) or pytest.skip(f"{tool} not installed (pip install -e '.[test]')")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)


def test_every_layer_is_a_package() -> None:
    for layer in LAYERS:
        assert (ROOT / "csplugin" / layer / "__init__.py").is_file(), layer


def test_layer_contracts_hold() -> None:
    done = _run("lint-imports")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " 0 broken" in done.stdout.split("Contracts:")[-1]


def test_ruff_is_clean() -> None:
    done = _run("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout[-3000:]


def test_no_module_is_longer_than_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in [*ROOT.glob("csplugin/**/*.py"),
                                                  *ROOT.glob("formats/*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_formats_and_engines_import_without_the_upper_layers() -> None:
    code = ("import sys, formats.cs, formats.star, formats.mrc, csplugin.engines.power_spectrum, "
            "csplugin.engines.transform; "
            "bad = [m for m in sys.modules if m.startswith(('csplugin.jobs', 'csplugin.app', "
            "'csplugin.averaging', 'csplugin.outputs'))]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
