"""Disk spill for order statistics: a class's aligned images in a temporary file, laid out
pixel tile by pixel tile, so that per-pixel stackers can read one tile of all particles at once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


class TileSpill:
    """A class's aligned images ``(n, P)`` float32 in an unnamed temporary file, tile-major.

    Pixel tile ``[start, stop)`` of all ``n`` images is one contiguous ``(n, stop - start)``
    block at byte ``4 n start``, with the tiles of :func:`~csplugin.engines.stackers.stack_in_tiles`
    for the same ``n`` and ``tile_bytes`` (``max(1, tile_bytes // (4 n))`` pixels).
    """

    def __init__(self, n: int, n_pixels: int, tile_bytes: int, directory: Path) -> None:
        self.n, self.n_pixels = n, n_pixels
        self.tile = max(1, tile_bytes // (4 * n))
        self._file = tempfile.TemporaryFile(prefix=".csplugin-spill-", dir=directory)

    def __enter__(self) -> TileSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def write(self, first: int, images: np.ndarray) -> None:
        """Store images ``(k, P)`` as rows ``first .. first + k - 1``."""
        for start in range(0, self.n_pixels, self.tile):
            stop = min(start + self.tile, self.n_pixels)
            block = np.ascontiguousarray(images[:, start:stop], np.float32)
            _pwrite_all(self._file.fileno(), block,
                        4 * (self.n * start + first * (stop - start)))

    def read(self, cols: slice) -> np.ndarray:
        """Pixels ``cols`` (one whole tile) of all images, ``(n, len(cols))`` float32."""
        if cols.start % self.tile or cols.stop != min(cols.start + self.tile, self.n_pixels):
            raise ValueError(f"{cols} is not one of the spill's tiles of {self.tile} pixels")
        out = np.empty((self.n, cols.stop - cols.start), np.float32)
        view, offset = memoryview(out).cast("B"), 4 * self.n * cols.start
        while view:
            got = os.preadv(self._file.fileno(), [view], offset)
            if got <= 0:
                raise OSError(f"temporary spill file ended early at byte {offset}")
            view, offset = view[got:], offset + got
        return out


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
