"""csplugin: apply stored cryoSPARC/RELION 2D alignments to particle images.

The Python API, one name per thing a user does (each imported on first use, so that
``csplugin --help`` pays for none of them)::

    import csplugin
    table = csplugin.open_particles("J12_020_particles.cs")   # .cs (+passthrough) or .star
    csplugin.save_particles(table, "J12.star")                # what `csplugin convert` does
    csplugin.export_aligned(table, "aligned/")                # `csplugin export-aligned`
    csplugin.power_spectra(table, "spectra/", csplugin.SpectrumOptions(pad=2))
    csplugin.class_averages(table, "averages/", stacker="median")
    csplugin.align_images(images, angles, shifts)             # the engine on arrays

A :class:`~csplugin.core.particles.ParticleTable` is also the particle image source of the
class-averaging toolkit :mod:`csplugin.averaging` (``table.images[i:j]``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_API = {
    "open_particles": "csplugin.core.particles",
    "ParticleTable": "csplugin.core.particles",
    "save_particles": "csplugin.core.native",
    "export_aligned": "csplugin.jobs.export_aligned",
    "power_spectra": "csplugin.jobs.power_spectrum",
    "SpectrumOptions": "csplugin.jobs.power_spectrum",
    "class_averages": "csplugin.jobs.class_averages",
    "align_images": "csplugin.engines.transform",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'csplugin' has no attribute {name!r}")
