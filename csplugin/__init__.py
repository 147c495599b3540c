"""csplugin: apply stored cryoSPARC/RELION 2D alignments to particle images."""

__version__ = "0.1.0"
