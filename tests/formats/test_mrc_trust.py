"""MRC stacks are read as their header describes them, or refused: never read wrongly.

Size mismatches both ways, big-endian files (machine stamp 0x11 0x11) and files whose stamp
is zero or wrong, compressed stacks, a header voxel size of 0, extended headers.
"""

from __future__ import annotations

import bz2
import gzip
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from formats import InputError
from formats.mrc import open_stack, write_stack

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
RELION31 = REAL / "cryodrgn" / "relion31.mrcs"
EMPIAR = REAL / "cryodrgn" / "empiar_10076_7.mrc"


def _swap_to_big_endian(src: Path, dst: Path) -> None:
    """Rewrite an MRC file big-endian with mrcfile (header, stamp and data)."""
    with warnings.catch_warnings():  # the real files have a zero stamp and no 'MAP ' id
        warnings.simplefilter("ignore", RuntimeWarning)
        mrc = mrcfile.open(src, permissive=True)
    with mrc:
        data = np.array(mrc.data)
        voxel = mrc.voxel_size.copy()
    big = data.byteswap().view(data.dtype.newbyteorder())
    with mrcfile.new(dst, overwrite=True) as mrc:
        mrc.set_data(big)
        mrc.set_image_stack()
        mrc.voxel_size = voxel


def _read_all(path: Path) -> np.ndarray:
    stack = open_stack(path)
    return stack.read(range(stack.n))


def _mode_file(path: Path, data: np.ndarray, big_endian: bool) -> Path:
    if big_endian:
        data = data.byteswap().view(data.dtype.newbyteorder())
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = 1.25
    return path


# --- file size against the header --------------------------------------------------------

def test_truncated_stack_names_both_sizes(tmp_path: Path) -> None:
    data = np.zeros((10, 64, 64), np.int16)
    path = _mode_file(tmp_path / "s.mrcs", data, big_endian=False)
    path.write_bytes(path.read_bytes()[:1024 + 123])
    with pytest.raises(InputError, match=r"truncated: holds 123 bytes of data but its header "
                       r"announces 81920 \(mode 1, 64x64x10"):
        open_stack(path)


def test_stack_larger_than_its_header_is_refused(tmp_path: Path) -> None:
    path = _mode_file(tmp_path / "s.mrcs", np.zeros((3, 8, 8), np.float32), big_endian=False)
    with open(path, "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(InputError, match=r"holds 778 bytes of data but its header announces 768 "
                       r"\(mode 2, 8x8x3\)"):
        open_stack(path)


def test_float32_payload_under_a_mode1_header_is_refused(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(4, 16, 16)).astype(np.float32)
    path = _mode_file(tmp_path / "s.mrcs", data, big_endian=False)
    raw = bytearray(path.read_bytes())
    raw[12:16] = np.int32(1).tobytes()  # the header now says int16
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"holds 4096 bytes of data but its header announces "
                       r"2048 \(mode 1, 16x16x4\); the size fits mode 2 \(float32\)") as error:
        open_stack(path)
    assert error.value.path == path and error.value.fix


def test_extended_header_sets_the_data_offset(tmp_path: Path) -> None:
    data = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
    path = tmp_path / "ext.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_extended_header(np.arange(100, dtype=np.uint8))
        mrc.set_data(data)
    stack = open_stack(path)
    assert stack.offset == 1124
    np.testing.assert_array_equal(stack.read([2, 0]), data[[2, 0]])
    raw = path.read_bytes()
    (tmp_path / "cut.mrcs").write_bytes(raw[:1024 + 50])  # stops inside the extended header
    with pytest.raises(InputError, match="truncated"):
        open_stack(tmp_path / "cut.mrcs")
    (tmp_path / "short.mrcs").write_bytes(raw[:1000])
    with pytest.raises(InputError, match="truncated: it has 1000 bytes"):
        open_stack(tmp_path / "short.mrcs")


# --- byte order ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint16])
def test_big_endian_modes_read_like_little_endian(tmp_path: Path, dtype: type) -> None:
    data = (np.random.default_rng(1).normal(size=(5, 12, 10)) * 300 + 1000).astype(dtype)
    little = _mode_file(tmp_path / "le.mrcs", data, big_endian=False)
    big = _mode_file(tmp_path / "be.mrcs", data, big_endian=True)
    assert big.read_bytes()[212:214] == b"\x11\x11"
    stack = open_stack(big)
    assert stack.dtype.byteorder == ">" and (stack.n, stack.box) == (5, (12, 10))
    assert stack.voxel_size == pytest.approx(1.25)
    expected = data.astype(np.float32)
    for indices in ([4, 0, 1, 1], [0, 1, 2, 3, 4], [3]):
        images = stack.read(indices)
        assert images.dtype == np.float32 and images.dtype.isnative
        np.testing.assert_array_equal(images, expected[indices])
        np.testing.assert_array_equal(images, open_stack(little).read(indices))
    np.testing.assert_array_equal(stack.mmap(), data)


@pytest.mark.parametrize("name", ["relion31.mrcs", "empiar_10076_7.mrc"])
def test_real_stack_swapped_to_big_endian_reads_the_same(tmp_path: Path, name: str) -> None:
    source = REAL / "cryodrgn" / name
    big = tmp_path / name
    _swap_to_big_endian(source, big)
    assert big.read_bytes()[212] == 0x11
    little, swapped = open_stack(source), open_stack(big)
    assert (swapped.n, swapped.box, swapped.voxel_size) == (little.n, little.box, little.voxel_size)
    np.testing.assert_array_equal(_read_all(big), _read_all(source))


def test_real_stack_as_int16_big_endian(tmp_path: Path) -> None:
    images = _read_all(RELION31)
    scaled = np.round(images / np.abs(images).max() * 30000).astype(np.int16)
    big = _mode_file(tmp_path / "be16.mrcs", scaled, big_endian=True)
    np.testing.assert_array_equal(_read_all(big), scaled.astype(np.float32))


@pytest.mark.parametrize("stamp", [b"\0\0\0\0", b"\x44\x41\0\0", b"\x44\x44\0\0"])
def test_little_endian_stamps_and_zero_stamp(tmp_path: Path, stamp: bytes) -> None:
    raw = bytearray(RELION31.read_bytes())
    raw[212:216] = stamp
    path = tmp_path / "s.mrcs"
    path.write_bytes(bytes(raw))
    np.testing.assert_array_equal(_read_all(path), _read_all(RELION31))


@pytest.mark.parametrize("stamp", [b"\0\0\0\0", b"\x44\x44\0\0"])
def test_big_endian_file_with_zero_or_wrong_stamp(tmp_path: Path, stamp: bytes) -> None:
    big = tmp_path / "be.mrcs"
    _swap_to_big_endian(RELION31, big)
    raw = bytearray(big.read_bytes())
    raw[212:216] = stamp  # the little-endian reading gives impossible sizes: try the other
    big.write_bytes(bytes(raw))
    stack = open_stack(big)
    assert stack.dtype.byteorder == ">"
    np.testing.assert_array_equal(stack.read(range(stack.n)), _read_all(RELION31))


# --- compressed stacks -----------------------------------------------------------------------

@pytest.mark.parametrize(("compress", "kind", "tool"),
                         [(gzip.compress, "gzip", "gunzip"), (bz2.compress, "bzip2", "bunzip2")])
@pytest.mark.parametrize("name", ["s.mrcs", "s.mrcs.gz", "s.mrcs.bz2"])
def test_compressed_stack_is_refused_with_how_to_decompress(
        tmp_path: Path, compress, kind: str, tool: str, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(compress(RELION31.read_bytes()))
    with pytest.raises(InputError) as error:
        open_stack(path)
    message = str(error.value)
    assert f"is a {kind}-compressed file" in message and tool in message
    assert "truncated" not in message and "\n" not in message
    assert name in message


# --- voxel size -----------------------------------------------------------------------------

def test_voxel_size_zero_is_reported_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "v.mrcs"
    write_stack(path, np.ones((2, 8, 8), np.float32), voxel_size=0.0)
    assert open_stack(path).voxel_size == 0.0
    with mrcfile.new(tmp_path / "unset.mrcs") as mrc:  # mx = 0: the header sets no voxel size
        mrc.set_data(np.ones((2, 8, 8), np.float32))
        mrc.header.mx = 0
    assert open_stack(tmp_path / "unset.mrcs").voxel_size == 0.0


@pytest.mark.parametrize("cella", [np.nan, -8.8])
def test_voxel_size_nan_or_negative_is_visible(tmp_path: Path, cella: float) -> None:
    path = tmp_path / "v.mrcs"
    write_stack(path, np.ones((2, 8, 8), np.float32), voxel_size=1.1)
    raw = bytearray(path.read_bytes())
    raw[40:44] = np.float32(cella).astype("<f4").tobytes()
    path.write_bytes(bytes(raw))
    voxel = open_stack(path).voxel_size
    assert np.isnan(voxel) if np.isnan(cella) else voxel == pytest.approx(-1.1)


def test_missing_stack_message_names_no_option(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as error:
        open_stack(tmp_path / "nothing.mrcs")
    assert "--" not in str(error.value)
