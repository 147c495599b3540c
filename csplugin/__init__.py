"""csplugin: apply stored cryoSPARC/RELION 2D alignments to particle images.

``csplugin.open_particles(path, passthrough=None, project_dir=None)`` reads a ``.cs`` or
``.star`` into a :class:`~csplugin.core.particles.ParticleTable`, the particle image source of
the class-averaging toolkit :mod:`csplugin.averaging` (``table.images[i:j]``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["open_particles"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that `csplugin --help` does not pay for pandas
    if name == "open_particles":
        from csplugin.core.particles import open_particles

        return open_particles
    raise AttributeError(f"module 'csplugin' has no attribute {name!r}")
