"""Engines: pure array maths (resampling, power spectra, stackers, CTF); no file I/O."""
