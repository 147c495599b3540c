"""Layer-line detection on averaged spectra of synthetic helical segments (known rise)."""

from __future__ import annotations

import numpy as np
import pytest

from csplugin.engines.layer_lines import (
    LayerLine,
    detect_layer_lines,
    fold_spectrum,
    layer_line_agreement,
)
from csplugin.engines.power_spectrum import PowerSpectrumAccumulator
from csplugin.synthetic.helices import HelixSpec, make_helical_segments


def _spectra(seg, k: int = 0, pad: int = 2, quantity: str = "power"
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full and half-set (split by filament parity) spectra of class k, axis as rendered."""
    accs = [PowerSpectrumAccumulator(seg.box, pad=pad, quantity=quantity) for _ in range(2)]
    for half, acc in enumerate(accs):
        sel = (seg.classes == k) & (seg.filament_ids % 2 == half)
        acc.add(seg.images[sel], seg.angles[sel])
    halves = [acc.result() for acc in accs]
    accs[0].merge(accs[1])
    return accs[0].result(), halves[0], halves[1]


@pytest.mark.parametrize("fraction", [0.15, 0.3, 0.45, 0.6, 0.75, 0.9])
def test_meridional_reflection_at_one_over_rise_anywhere_inside_nyquist(fraction: float) -> None:
    pixel = 1.0
    nyquist = 1 / (2 * pixel)
    rise = 1 / (fraction * nyquist)
    helix = HelixSpec("m", rise, 41.3, 1, 20.0, max(0.25 * rise, 0.8 * pixel))
    # box 128 Å: >= 9.6 rises per segment (with ~7 the masked segment's equator interferes
    # with the reflection and pulls it by ~4 %, a real finite-segment effect)
    seg = make_helical_segments([helix], box=128, pixel_size=pixel, filaments_per_helix=8,
                                segments_per_filament=12, step_rises=2.7, noise_sigma=0.2,
                                seed=int(fraction * 100))
    spectrum, _, _ = _spectra(seg)
    lines = detect_layer_lines(spectrum, pixel)
    meridional = [ln for ln in lines if ln.meridional]
    errors = [abs(ln.height * rise - 1) for ln in meridional]
    assert errors and min(errors) < 0.015, (fraction, [(ln.height, ln.strength) for ln in lines])


def test_amplitude_spectra_and_padding_give_the_same_lines() -> None:
    helix = HelixSpec("a", 9.0, 37.7, 1, 30.0, 2.5)
    seg = make_helical_segments([helix], box=96, pixel_size=1.5, filaments_per_helix=6,
                                segments_per_filament=10, noise_sigma=0.3, seed=3)
    found = {}
    for pad, quantity in ((2, "power"), (2, "amplitude"), (1, "power")):
        lines = detect_layer_lines(_spectra(seg, pad=pad, quantity=quantity)[0], 1.5)
        found[pad, quantity] = lines
        mer = [ln for ln in lines if ln.meridional and abs(ln.height * helix.rise - 1) < 0.015]
        assert mer, (pad, quantity, lines)
    # the strongest lines of the padded power spectrum are found by the others too
    step = 1 / (96 * 1.5)
    strong = [ln for ln in found[2, "power"] if ln.strength > 20]
    for key, lines in found.items():
        for ln in strong:
            assert min(abs(ln.height - other.height) for other in lines) < 1.5 * step, key


def test_pure_noise_halves_do_not_agree_on_any_line() -> None:
    rng = np.random.default_rng(5)
    images = rng.normal(size=(240, 96, 96)).astype(np.float32)
    angles = rng.uniform(0, 2 * np.pi, 240)
    accs = [PowerSpectrumAccumulator(96) for _ in range(2)]
    accs[0].add(images[:120], angles[:120])
    accs[1].add(images[120:], angles[120:])
    halves = [a.result() for a in accs]
    accs[0].merge(accs[1])
    lines = detect_layer_lines(accs[0].result(), 1.0, half1=halves[0], half2=halves[1])
    # noise can reach the strength threshold (heavy-tailed folded spectra), never both halves
    assert len(lines) <= 5
    assert all(ln.half_agreement < 0.5 for ln in lines), lines
    # agreement at arbitrary heights of pure noise stays near 0
    heights = np.linspace(0.02, 0.45, 40)
    agreement = layer_line_agreement(halves[0], halves[1], 1.0, heights)
    assert np.nanmax(np.abs(agreement)) < 0.45 and abs(np.nanmean(agreement)) < 0.1


def test_real_lines_agree_between_filament_halves() -> None:
    helix = HelixSpec("h", 10.0, 33.5, 1, 40.0, 2.5)
    seg = make_helical_segments([helix], box=96, pixel_size=2.0, filaments_per_helix=8,
                                segments_per_filament=10, noise_sigma=0.3, seed=7)
    spectrum, h1, h2 = _spectra(seg)
    lines = detect_layer_lines(spectrum, 2.0, half1=h1, half2=h2)
    assert all(isinstance(ln, LayerLine) for ln in lines)
    strong = [ln for ln in lines if ln.strength > 10]
    assert strong and all(ln.half_agreement > 0.5 for ln in strong)
    assert all(ln.height > 0 and ln.peak_radius >= 0 for ln in lines)


def test_fold_averages_the_four_quadrants() -> None:
    rng = np.random.default_rng(0)
    s = rng.random((16, 16))
    q = fold_spectrum(s)
    assert q.shape == (8, 8)
    assert q[2, 3] == pytest.approx((s[10, 11] + s[6, 11] + s[10, 5] + s[6, 5]) / 4)
