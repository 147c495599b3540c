"""index.html of the power-spectrum job, rendered in headless Chromium: every image loads
from beside the page (no server, no network) and the screenshot is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from csplugin.core.particles import open_particles
from csplugin.jobs.power_spectrum import SpectrumOptions, power_spectra
from csplugin.synthetic.helices import make_helical_job, preset_helices


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    job = make_helical_job(root, helices=preset_helices()[:2], axis_angle=[40.0, 100.0],
                           noise_sigma=0.2, seed=3, filaments_per_helix=3,
                           segments_per_filament=6)
    out = root / "ps"
    power_spectra(open_particles(job.particles_cs), out, SpectrumOptions())
    return out / "index.html"


def _browser(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120)


def test_page_is_self_contained(page: Path) -> None:
    text = page.read_text()
    sources = re.findall(r"<img src='([^']+)'", text)
    assert len(sources) == 2  # one figure per class
    for src in sources:  # images beside the page, nothing fetched from elsewhere
        assert "/" not in src and (page.parent / src).is_file()
    assert "http://" not in text and "https://" not in text
    assert "Class 0" in text and "Class 1" in text and "<th>rise (Å)</th>" in text


@needs_chromium
def test_every_image_loads_in_chromium(page: Path) -> None:
    dom = _browser("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    n = len(re.findall(r"<img ", page.read_text()))
    assert f'data-images-loaded="{n}"' in dom.stdout, re.findall(r"data-images-loaded=\"[^\"]*\"",
                                                                  dom.stdout)
    assert f"<title>csplugin spectra: {n} images loaded</title>" in dom.stdout


@needs_chromium
def test_screenshot_is_not_blank(page: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    run = _browser(f"--screenshot={shot}", "--window-size=1400,1600", page.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    image = imread(shot)[..., :3]
    assert image.std() > 0.1  # text, tables and figures, not a blank page
    # the figures are there: a good share of the page is dark (spectra, averages)
    assert np.mean(image.mean(axis=2) < 0.3) > 0.03
