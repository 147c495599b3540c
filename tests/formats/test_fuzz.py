"""Fuzz the three readers: any bytes give a valid table/stack or an InputError, nothing else.

Inputs are arbitrary byte strings and mutations of small valid files (bit flips, truncation,
overwritten bytes, overwritten header fields, inserted bytes). Each call runs under a wall
clock alarm (no hangs) with ``pickle`` disabled (nothing is ever unpickled).

Profiles: ``ci`` (default; a few seconds in all) and ``long`` for local runs::

    HYPOTHESIS_PROFILE=long python -m pytest -q tests/formats/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import cryosparc.dataset  # noqa: F401  (imported here so the first example is not slow)
import mrcfile
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import InputError
from formats.cs import CSDAT_MAGIC, NUMPY_MAGIC, read_cs
from formats.mrc import open_stack
from formats.star import read_star

settings.register_profile("ci", max_examples=40, deadline=2000, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=5000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
SECONDS = 10  # a reader that takes longer than this on a small file is hung


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    """Fail on a hang (SIGALRM) or on any attempt to unpickle."""
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"reader still running after {SECONDS} s")

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("a reader tried to unpickle")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, SECONDS)
    try:
        with mock.patch.object(pickle, "load", no_pickle), \
                mock.patch.object(pickle, "loads", no_pickle):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check(reader: Callable[[Path], object], data: bytes, suffix: str,
           valid: Callable[[object], None]) -> None:
    """Write ``data`` to a file, read it: a valid result or an InputError naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        with _guarded():
            try:
                result = reader(path)
            except InputError as error:
                assert error.path == path and error.problem
                assert "\n" not in str(error)
                return
        valid(result)


# --- what a successful read must give -----------------------------------------------------

def _valid_cs(data: object) -> None:
    assert isinstance(data, np.ndarray) and data.ndim == 1
    assert data.dtype.names is not None and "uid" in data.dtype.names
    assert not data.dtype.hasobject


def _valid_star(blocks: object) -> None:
    assert isinstance(blocks, dict) and blocks
    assert all(isinstance(table, pd.DataFrame) for table in blocks.values())


def _read_whole_stack(path: Path) -> np.ndarray:
    stack = open_stack(path)
    assert stack.n >= 1 and min(stack.box) >= 1
    assert stack.offset + stack.n * stack.image_bytes == path.stat().st_size
    return stack.read(range(stack.n))


def _valid_images(images: object) -> None:
    assert isinstance(images, np.ndarray) and images.dtype == np.float32
    assert images.ndim == 3 and images.dtype.isnative


# --- mutations of valid files ---------------------------------------------------------------

INTERESTING = [0, 1, -1, 2, 3, 4, 6, 12, 101, 255, 1024, 2**16, 2**31 - 1, -(2**31)]


@st.composite
def mutated(draw: st.DrawFn, base: bytes, fields: tuple[int, ...] = ()) -> bytes:
    """``base`` after one to four random edits."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        ops = ["flip", "truncate", "overwrite", "insert"] + (["field"] * 2 if fields else [])
        op = draw(st.sampled_from(ops))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:  # an int32 header field of either byte order set to an edge value
            offset = draw(st.sampled_from(fields))
            value = draw(st.sampled_from(INTERESTING) | st.integers(-(2**31), 2**31 - 1))
            order = draw(st.sampled_from(["<", ">"]))
            if offset + 4 <= len(data):
                data[offset:offset + 4] = np.array(value, dtype=f"{order}i4").tobytes()
    return bytes(data)


def _small_mrc(big_endian: bool, mode_dtype: type = np.float32) -> bytes:
    images = (np.arange(3 * 8 * 6) % 17).reshape(3, 8, 6).astype(mode_dtype)
    if big_endian:
        images = images.byteswap().view(images.dtype.newbyteorder())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.mrcs"
        with mrcfile.new(path) as mrc:
            mrc.set_extended_header(np.zeros(16, np.uint8))
            mrc.set_data(images)
            mrc.voxel_size = 1.5
        return path.read_bytes()


CS_NUMPY = (REAL / "cryodrgn" / "empiar_10076_7.cs").read_bytes()
CS_CSDAT = (REAL / "derived" / "cryosparc_J2_particles_exported.csdat.cs").read_bytes()
STAR_30 = (REAL / "cryodrgn" / "empiar_10076_7.star").read_bytes()
STAR_31 = (REAL / "cryodrgn" / "relion31.star").read_bytes()
MRC_FILES = [_small_mrc(False), _small_mrc(True), _small_mrc(True, np.int16),
             _small_mrc(False, np.uint16)]
#: nx, ny, nz, mode, nxstart.., mx, my, mz, nsymbt, and the machine stamp word.
MRC_FIELDS = (0, 4, 8, 12, 16, 28, 32, 36, 92, 212)


def test_fuzz_inputs_are_valid_to_start_with() -> None:
    _valid_cs(read_cs(REAL / "cryodrgn" / "empiar_10076_7.cs"))
    for data, suffix in ((CS_CSDAT, ".cs"), (STAR_31, ".star")):
        _check(read_cs if suffix == ".cs" else read_star, data, suffix,
               _valid_cs if suffix == ".cs" else _valid_star)
    for data in MRC_FILES:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "s.mrcs"
            path.write_bytes(data)
            np.testing.assert_array_equal(_read_whole_stack(path),
                                          (np.arange(3 * 8 * 6) % 17).reshape(3, 8, 6))


# --- .cs ---------------------------------------------------------------------------------------

@given(st.binary(max_size=512) | st.binary(max_size=512).map(lambda b: NUMPY_MAGIC + b)
       | st.binary(max_size=512).map(lambda b: CSDAT_MAGIC + b))
def test_fuzz_cs_any_bytes(data: bytes) -> None:
    _check(read_cs, data, ".cs", _valid_cs)


@given(mutated(CS_NUMPY, fields=(6, 8)))
def test_fuzz_cs_numpy_mutations(data: bytes) -> None:
    _check(read_cs, data, ".cs", _valid_cs)


@given(mutated(CS_CSDAT, fields=(6, 8, 10)))
def test_fuzz_cs_csdat_mutations(data: bytes) -> None:
    _check(read_cs, data, ".cs", _valid_cs)


def test_cs_pickle_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    path = tmp_path / "evil.cs"
    with open(path, "wb") as f:
        np.save(f, np.array([(1, Payload())], dtype=[("uid", "<u8"), ("x", "O")]),
                allow_pickle=True)
    with pytest.raises(InputError, match="pickled"):
        read_cs(path)
    # the same payload behind a header that claims a plain dtype is no better
    raw = path.read_bytes().replace(b"'|O'", b"'<u8'")
    path.write_bytes(raw)
    with pytest.raises(InputError):
        read_cs(path)
    assert not marker.exists()


def test_cs_with_appended_rows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.cs"
    path.write_bytes(CS_NUMPY + CS_NUMPY[-208:])
    with pytest.raises(InputError, match="holds 1664 bytes of data but its header announces 1456"):
        read_cs(path)
    path.write_bytes(CS_NUMPY[:-10])
    with pytest.raises(InputError, match="truncated: holds 1446 bytes"):
        read_cs(path)


# --- .star ---------------------------------------------------------------------------------------

STAR_TEXT = st.lists(st.sampled_from(["data_", "data_optics", "data_particles", "loop_",
                                      "_rlnImageName #1", "_rlnAnglePsi", "# version 30001",
                                      "1@a.mrcs 3.5", "1 2 3", "", "'", '"', "#", "_", "\t"])
                     | st.text(max_size=20), max_size=12).map(lambda lines: "\n".join(lines))


@given(st.binary(max_size=512) | STAR_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_star_any_bytes(data: bytes) -> None:
    _check(read_star, data, ".star", _valid_star)


@given(mutated(STAR_30) | mutated(STAR_31))
def test_fuzz_star_mutations(data: bytes) -> None:
    _check(read_star, data, ".star", _valid_star)


# --- MRC ---------------------------------------------------------------------------------------

@given(st.binary(min_size=1024, max_size=1024 + 3 * 8 * 6 * 4 + 64) | st.binary(max_size=1100))
def test_fuzz_mrc_any_bytes(data: bytes) -> None:
    _check(_read_whole_stack, data, ".mrcs", _valid_images)


@given(st.sampled_from(range(len(MRC_FILES))).flatmap(
    lambda i: mutated(MRC_FILES[i], fields=MRC_FIELDS)))
def test_fuzz_mrc_mutations(data: bytes) -> None:
    _check(_read_whole_stack, data, ".mrcs", _valid_images)


@given(st.sampled_from(MRC_FIELDS), st.sampled_from(INTERESTING), st.sampled_from(["<", ">"]),
       st.sampled_from(range(len(MRC_FILES))))
def test_fuzz_mrc_header_fields(offset: int, value: int, order: str, which: int) -> None:
    data = bytearray(MRC_FILES[which])
    data[offset:offset + 4] = np.array(value, dtype=f"{order}i4").tobytes()
    _check(_read_whole_stack, bytes(data), ".mrcs", _valid_images)
