"""Readers and writers for cryoSPARC ``.cs``, RELION ``.star`` and MRC stacks.

This package knows file syntax and each program's native structures only. It does no image
maths and imports nothing from :mod:`csplugin`; the conversion between native fields and
csplugin's normalised particle table lives in :mod:`csplugin.core.conventions`.
"""

from formats.errors import InputError

__all__ = ["InputError"]
