"""The README's Python API example runs as written (paths swapped for the synthetic job)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from csplugin.synthetic import SyntheticJob

README = Path(__file__).resolve().parent.parent / "README.md"


def _api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_example_runs_on_the_synthetic_job(job: SyntheticJob, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code = _api_example()
    assert "P3/J12/J12_020_particles.cs" in code and "select_classes([0, 4])" in code
    code = code.replace("P3/J12/J12_020_particles.cs", str(job.particles_cs))
    code = code.replace("select_classes([0, 4])", "select_classes([0, 2])")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {"images": rng.standard_normal((3, 32, 32)).astype(np.float32),
                 "angles": rng.uniform(0, 2 * np.pi, 3), "shifts": rng.uniform(-2, 2, (3, 2))}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["aligned"].shape == (3, 32, 32)
    assert (tmp_path / "aligned" / "particles.star").is_file()
    assert (tmp_path / "J12.star").is_file()
    assert (tmp_path / "averages" / "class_averages.mrcs").is_file()
    assert any((tmp_path / "spectra").glob("ps_class*.mrc"))
