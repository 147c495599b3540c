"""Names with spaces survive a STAR round trip (quoted as RELION writes them); names no STAR
reader can take back are refused in one line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from csplugin.core.particles import open_particles
from csplugin.jobs.export_aligned import export_aligned
from csplugin.synthetic import SyntheticJob
from formats import InputError
from formats.star import read_star, write_star


def test_values_with_spaces_are_quoted_and_read_back(tmp_path: Path) -> None:
    names = ["1@my stacks/a b.mrcs", "2@plain.mrcs", ""]
    write_star(tmp_path / "q.star", {"particles": pd.DataFrame({"rlnImageName": names,
                                                                "rlnAnglePsi": [1.0, 2, 3]})})
    text = (tmp_path / "q.star").read_text()
    assert '"1@my stacks/a b.mrcs" ' in text and '""' in text and "\t" not in text
    assert starfile.read(tmp_path / "q.star")["rlnImageName"].fillna("").tolist() == names
    assert read_star(tmp_path / "q.star")["particles"]["rlnImageName"].tolist()[:2] == names[:2]


@pytest.mark.parametrize("bad", ['a"b.mrcs', "a\tb.mrcs", "a\nb.mrcs"])
def test_unwritable_names_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InputError, match="rlnImageName"):
        write_star(tmp_path / "q.star", {"particles": pd.DataFrame({"rlnImageName": [bad]})})
    assert not (tmp_path / "q.star").exists()


@pytest.mark.relion
def test_export_into_a_directory_with_a_space_opens_in_relion(
        job: SyntheticJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path("with space") / "aligned out"
    result = export_aligned(open_particles(job.particles_cs), out)
    assert open_particles(result.star).images[0:3].shape[0] == 3  # csplugin reads it back
    done = subprocess.run([shutil.which("relion_stack_create"), "--i", str(result.star),
                           "--o", "relion"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with mrcfile.open("relion.mrcs") as mrc, mrcfile.open(result.stacks[0]) as ours:
        np.testing.assert_array_equal(mrc.data[:5], ours.data[:5])
