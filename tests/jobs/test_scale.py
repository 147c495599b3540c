"""Metadata at scale: read, filter and convert stay within a stated time and memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from csplugin.core.particles import open_particles
from csplugin.synthetic.metadata import make_metadata

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

#: Peak resident memory allowed for reading, filtering and converting n particles' metadata.
BASE_MB, PER_PARTICLE_KB = 200, 2.0  # 1,000,000 particles: 2.2 GB (measured: 1.65 GB)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/time").exists(),
                    reason="GNU time (/usr/bin/time) measures the peak memory")
def test_metadata_of_many_particles_within_time_and_memory_bounds(tmp_path: Path) -> None:
    n = 100_000
    cs_path, star_path = make_metadata(tmp_path, n)
    bound_mb = BASE_MB + PER_PARTICLE_KB * n / 1024
    for source, target in ((cs_path, tmp_path / "out.star"), (star_path, tmp_path / "out.cs")):
        done = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", sys.executable,
                               str(BENCHMARKS / "bench_scale.py"), "--child", str(source),
                               str(target)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        phases = json.loads(done.stdout.strip().splitlines()[-1])
        wall, kb = map(float, done.stderr.strip().splitlines()[-1].split()[1:])
        assert phases["rows"] == n
        assert wall < 60 and phases["read"] + phases["filter"] + phases["convert"] < 30
        assert kb / 1024 < bound_mb, f"{source.suffix}: peak {kb / 1024:.0f} MB"
        converted = open_particles(target)
        assert len(converted) == phases["kept"]
        kept = np.isin(open_particles(source).particles["class_index"], [0, 2])
        assert phases["kept"] == kept.sum()
        np.testing.assert_allclose(converted.particles["angle"],
                                   open_particles(source).particles["angle"][kept], atol=1e-6)
