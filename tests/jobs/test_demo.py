"""`csplugin demo` prints a verdict per check and fails when a check fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from csplugin.app.cli import app
from csplugin.jobs import demo


def test_demo_passes_every_check_and_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--n-per-class", "60",
                                      "--box", "128", "--quiet"])
    assert result.exit_code == 0, result.output
    verdicts = [line.split()[0] for line in result.output.splitlines()
                if line.strip().startswith(("PASS", "FAIL"))]
    assert len(verdicts) >= 6 and set(verdicts) == {"PASS"}
    assert f"{len(verdicts)} of {len(verdicts)} checks passed" in result.output


def test_demo_exits_nonzero_when_a_check_fails(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "AGREEMENT_MAX", -1.0)  # no difference can be that small
    result = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--n-per-class", "60",
                                      "--box", "128", "--quiet"])
    assert result.exit_code == 1
    assert "FAIL  .cs and .star exports" in result.output
    assert "FAILED: .cs and .star exports" in result.output
