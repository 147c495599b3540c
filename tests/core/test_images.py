"""A job's own class averages (slice = 0-based class index) are checked before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from csplugin.core.images import open_class_averages
from formats import InputError
from formats.mrc import write_stack


def test_class_averages_must_fit_the_particles_and_the_classes(tmp_path: Path) -> None:
    path = tmp_path / "classes.mrcs"
    write_stack(path, np.zeros((3, 32, 32), np.float32), 1.5)
    assert open_class_averages(path, np.array([0, 2]), 32).n == 3
    with pytest.raises(InputError, match=r"the particles are 64 px"):
        open_class_averages(path, np.array([0]), 64)
    with pytest.raises(InputError, match=r"has 3 images but class index 3 \(0-based\)"):
        open_class_averages(path, np.array([1, 3]), 32)
