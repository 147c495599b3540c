"""Every .cs csplugin writes loads in cryosparc-tools with the fields cryoSPARC relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from cryosparc.controllers.job import ExternalJobController
from cryosparc.dataset import Dataset

from csplugin.app.cryosparc import REQUIRED, check_fields, load_for_project, register_output
from csplugin.core.particles import open_particles
from csplugin.jobs.class_averages import class_averages
from csplugin.jobs.export_aligned import export_aligned
from csplugin.synthetic import SyntheticJob
from formats import InputError
from formats.mrc import open_stack


def _written_cs(job: SyntheticJob, root: Path) -> dict[str, tuple[Path, str, Path]]:
    """Every kind of .cs csplugin writes: name -> (file, kind, where relative paths start)."""
    out: dict[str, tuple[Path, str, Path]] = {}
    for source in ("cs", "star"):
        table = open_particles(job.particles_cs if source == "cs" else job.particles_star)
        result = export_aligned(table, root / f"export_{source}", particles_per_stack=50)
        out[f"export from .{source}"] = (result.cs, "particle", result.cs.parent)
    averages = class_averages(open_particles(job.particles_cs), root / "averages")
    out["class averages"] = (averages.cs, "template", averages.cs.parent)
    for source, path in (("star", job.particles_star), ("cs", job.particles_cs)):
        target = root / f"convert_{source}.cs"
        done = subprocess.run([sys.executable, "-m", "csplugin", "convert", str(path), "-o",
                               str(target)], capture_output=True, text=True, cwd=job.project)
        assert done.returncode == 0, done.stderr
        # convert copies stack paths as written: RELION's start from its project (cwd),
        # cryoSPARC's from the cryoSPARC project directory
        out[f"convert from .{source}"] = (target, "particle", job.project)
    return out


def test_every_written_cs_loads_in_cryosparc_tools_with_the_required_fields(
        job: SyntheticJob, tmp_path: Path) -> None:
    written = _written_cs(job, tmp_path)
    assert len(written) == 5
    for what, (path, kind, base) in written.items():
        raw = np.load(path, allow_pickle=False)  # the numpy encoding cryoSPARC itself writes
        check_fields(raw, kind, path)
        assert all(raw.dtype[name].kind != "O" for name in raw.dtype.names), what
        assert raw.dtype["blob/path"].kind == "S", what  # fixed-width bytes
        dataset = Dataset.load(str(path))
        assert len(dataset) == len(raw) > 0, what
        assert set(REQUIRED[kind]) <= set(dataset.fields()), what
        for name in ("uid", "blob/idx", "blob/shape", "blob/psize_A"):
            np.testing.assert_array_equal(dataset[name], raw[name], err_msg=f"{what}: {name}")
        # every row points at an existing stack slice of the stated shape and pixel size
        for text, idx, shape, psize in zip(dataset["blob/path"], dataset["blob/idx"],
                                           dataset["blob/shape"], dataset["blob/psize_A"]):
            stack = open_stack(base / str(text).lstrip(">"))
            assert idx < stack.n and tuple(shape) == stack.box, what
            assert abs(psize - job.pixel_size) < 1e-5, what
    # particles carry the sign of their input (cryoSPARC's -1 here) or -1 for RELION input
    for what in ("export from .cs", "export from .star", "convert from .star"):
        np.testing.assert_array_equal(Dataset.load(str(written[what][0]))["blob/sign"], -1.0)


def test_check_fields_rejects_what_cryosparc_would_not_import() -> None:
    good = np.zeros(2, dtype=[("uid", "<u8"), ("blob/path", "S4"), ("blob/idx", "<u4"),
                              ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4")])
    good["uid"] = [1, 2]
    check_fields(good, "template")
    with pytest.raises(InputError, match="no field 'blob/sign'"):
        check_fields(good, "particle")
    wrong = good.astype([("uid", "<u8"), ("blob/path", "S4"), ("blob/idx", "<i8"),
                         ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4")])
    with pytest.raises(InputError, match="blob/idx"):
        check_fields(wrong, "template")
    good["uid"] = 7
    with pytest.raises(InputError, match="repeats uids"):
        check_fields(good, "template")


def test_register_output_uses_the_cryosparc_tools_api_with_project_paths(
        job: SyntheticJob, tmp_path: Path) -> None:
    project = tmp_path / "CS-project"
    outdir = project / "J42" / "aligned"  # the External job's own directory
    exported = export_aligned(open_particles(job.particles_cs), outdir, particles_per_stack=50)
    averages = class_averages(open_particles(job.particles_cs), project / "J42" / "averages")
    # autospec: a call that does not fit cryosparc-tools' real signatures fails here
    external = mock.create_autospec(ExternalJobController, instance=True)

    saved = register_output(external, exported.cs, project, "particle")
    external.add_output.assert_called_once_with(
        "particle", name="aligned_particles", title="aligned_particles",
        slots=["blob", "ctf", "alignments2D", "location"])
    name, dataset = external.save_output.call_args.args
    assert name == "aligned_particles" and dataset is saved
    assert set(dataset.prefixes()) == {"blob", "ctf", "alignments2D", "location"}
    assert sorted(set(dataset["blob/path"])) == ["J42/aligned/particles_aligned_0000.mrcs",
                                                 "J42/aligned/particles_aligned_0001.mrcs",
                                                 "J42/aligned/particles_aligned_0002.mrcs"]
    assert all((project / p).is_file() for p in dataset["blob/path"])
    np.testing.assert_array_equal(dataset["uid"], open_particles(job.particles_cs).particles["uid"])

    external.reset_mock()
    templates = register_output(external, averages.cs, project, "template", title="csplugin")
    external.add_output.assert_called_once_with("template", name="class_averages",
                                                title="csplugin", slots=["blob"])
    assert set(templates["blob/path"]) == {"J42/averages/class_averages.mrcs"}
    assert list(templates["blob/idx"]) == [0, 1, 2]

    with pytest.raises(InputError, match="outside the cryoSPARC project"):
        load_for_project(exported.cs, tmp_path / "another-project")
