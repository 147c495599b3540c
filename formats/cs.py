"""cryoSPARC ``.cs`` datasets: read both encodings, merge a passthrough by ``uid``, write.

A ``.cs`` file is one numpy structured array (one row per item, fields such as ``uid``,
``blob/path``, ``alignments2D/pose``). Two encodings exist on disk:

========================  ==================================================================
first bytes               encoding
========================  ==================================================================
``b"\\x93NUMPY"``          numpy ``.npy`` (what cryoSPARC jobs write); read with ``np.load``
                          (``allow_pickle=False``: nothing in the file is ever executed)
``b"\\x95CSDAT"``          cryosparc-tools' compressed stream; read with
                          ``cryosparc.dataset.Dataset.load``
========================  ==================================================================

Both are returned as a numpy structured array with fixed-length byte strings (``|S``), the
layout of the numpy encoding. Writing always uses the numpy encoding, through a file handle
(``np.save(path)`` would append ``.npy``), atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from formats.atomic import atomic_output
from formats.errors import InputError, brief

NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"
#: numpy >= 1.24 refuses .npy headers over 10 kB unless told; many-class .cs files exceed it.
MAX_HEADER_SIZE = 1024**3


def read_cs(path: str | Path) -> np.ndarray:
    """Read a cryoSPARC ``.cs`` file of either encoding.

    Parameters
    ----------
    path
        The ``.cs`` file.

    Returns
    -------
    np.ndarray
        Structured array of shape ``(n,)``; string fields are fixed-length bytes.

    Raises
    ------
    InputError
        Missing, truncated, pickled (object dtype) or otherwise unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == NUMPY_MAGIC:
        data = _read_numpy(path)
    elif magic == CSDAT_MAGIC:
        data = _read_csdat(path)
    else:
        raise InputError(path, "is not a cryoSPARC .cs file (unknown first bytes)",
                         "pass a .cs dataset written by cryoSPARC or cryosparc-tools")
    if data.dtype.names is None or data.ndim != 1 or data.dtype.hasobject:
        raise InputError(path, "is a plain array, not a cryoSPARC dataset",
                         "pass a .cs dataset written by cryoSPARC or cryosparc-tools")
    if "uid" not in data.dtype.names:
        raise InputError(path, "has no 'uid' field", "pass a cryoSPARC dataset (.cs)")
    return data


def _numpy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Parse a ``.npy`` header: ``(shape, dtype, byte offset of the data)``.

    Checks that the file holds exactly the bytes the header announces, so that a truncated
    file, or one with data appended, is refused before anything is allocated or loaded.
    """
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            reader = readers.get(version)
            if reader is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = reader(f, max_header_size=MAX_HEADER_SIZE)
            offset = f.tell()
    except (OSError, EOFError) as exc:
        raise InputError(path, f"is truncated or damaged ({brief(exc)})",
                         "copy it again from the job directory") from None
    except Exception as exc:  # noqa: BLE001 -- numpy raises many types on bad headers
        raise InputError(path, f"has a damaged .npy header ({brief(exc)})",
                         "copy it again from the job directory") from None
    if dtype.hasobject:
        raise InputError(path, "holds Python objects (pickled), which csplugin never loads",
                         "re-save it with cryosparc-tools or numpy without object fields")
    announced = int(np.prod(shape, dtype=object)) * dtype.itemsize
    size = path.stat().st_size
    if size - offset < announced:
        raise InputError(path, f"is truncated: holds {size - offset} bytes of data but its "
                         f"header announces {announced} ({shape} rows of {dtype.itemsize} bytes)",
                         "copy it again from the job directory")
    if size - offset > announced:
        raise InputError(path, f"holds {size - offset} bytes of data but its header announces "
                         f"{announced} ({shape} rows of {dtype.itemsize} bytes); the rest of "
                         "the file would be ignored",
                         "copy it again from the job directory, or re-save it")
    return shape, dtype, offset


def _read_numpy(path: Path) -> np.ndarray:
    """Read the numpy encoding, never unpickling anything."""
    _numpy_header(path)
    try:
        return np.load(path, allow_pickle=False, max_header_size=MAX_HEADER_SIZE)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError(
                path, "holds Python objects (pickled), which csplugin never loads",
                "re-save it with cryosparc-tools or numpy without object fields",
            ) from None
        raise InputError(path, f"is not a readable .cs file ({brief(exc)})",
                         "the file may be truncated; copy it again from the job directory"
                         ) from None
    except (OSError, EOFError) as exc:
        raise InputError(path, f"is truncated or damaged ({brief(exc)})",
                         "copy it again from the job directory") from None
    except Exception as exc:  # noqa: BLE001 -- anything else numpy may raise on a damaged file
        raise InputError(path, f"is not a readable .cs file ({brief(exc)})",
                         "copy it again from the job directory") from None


#: lz4 cannot expand data by more than this factor; a larger claim is a damaged header.
_LZ4_MAX_RATIO = 256


def _check_csdat(path: Path) -> None:
    """Check a CSDAT stream's structure before cryosparc-tools loads it.

    cryosparc-tools' compiled loader trusts the stream: a damaged header, column size or
    string index can make it read outside its buffers and crash the process (found by
    fuzzing). This walks the stream as the loader does (``Dataset._load_stream``) and
    refuses anything the loader would not handle safely: sizes past the end of the file,
    columns that do not decompress to exactly ``length`` rows, and string indexes outside
    the string heap.
    """
    from cryosparc.dataset.core import Data, Stream
    from cryosparc.dataset.dtype import decode_dataset_header

    def damaged(what: str) -> InputError:
        return InputError(path, f"is a damaged CSDAT .cs file ({what})",
                          "copy it again, or re-save it with cryosparc-tools")

    raw = path.read_bytes()
    pos = len(CSDAT_MAGIC)
    if len(raw) < pos + 4:
        raise damaged("it ends inside the header")
    header_size = int.from_bytes(raw[pos:pos + 4], "little")
    pos += 4
    if pos + header_size > len(raw):
        raise damaged(f"its header of {header_size} bytes runs past the end of the file")
    try:
        header = decode_dataset_header(raw[pos:pos + header_size])
        length = header["length"]
        fields = [(str(f[0]), np.dtype((f[1], tuple(f[2])) if len(f) > 2 else f[1]))
                  for f in header["dtype"]]
        compressed = set(header["compressed_fields"])
    except Exception as exc:  # noqa: BLE001 -- json, assertions, numpy dtype parsing
        raise damaged(f"unreadable header: {brief(exc)}") from None
    pos += header_size
    names = [name for name, _ in fields]
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise damaged(f"row count {length!r}")
    if len(set(names)) != len(names) or not all(names):
        raise damaged("repeated or empty field names")
    if compressed - set(names) or (compressed and header["compression"] != "lz4"):
        raise damaged("compressed fields that are not fields")
    stream = Stream(Data())
    strings: list[np.ndarray] = []
    for name, dtype in (fields if length else []):
        if dtype.hasobject and (dtype.shape or dtype.kind != "O"):
            raise damaged(f"field {name!r} has an unsupported object layout")
        expected = length * (8 if dtype.hasobject else dtype.itemsize)  # strings: heap indexes
        if pos + 4 > len(raw):
            raise damaged(f"it ends before field {name!r}")
        size = int.from_bytes(raw[pos:pos + 4], "little")
        pos += 4
        if pos + size > len(raw):
            raise damaged(f"field {name!r} runs past the end of the file")
        column = raw[pos:pos + size]
        pos += size
        if name in compressed:
            if expected == 0 or expected > min(size * _LZ4_MAX_RATIO, 2**31 - 1):
                raise damaged(f"field {name!r} cannot hold {length} rows")
            try:
                column = bytes(stream.decompress(column, 0, expected))
            except Exception as exc:  # noqa: BLE001
                raise damaged(f"field {name!r} does not decompress: {brief(exc)}") from None
        if len(column) != expected:
            raise damaged(f"field {name!r} holds {len(column)} bytes, not {length} rows")
        if dtype.hasobject:
            strings.append(np.frombuffer(column, dtype="<u8"))
    heap = raw[pos:]
    for indexes in strings:
        if indexes.size and (not heap.endswith(b"\0") or int(indexes.max()) >= len(heap)):
            raise damaged("a string points outside the string heap")


def _read_csdat(path: Path) -> np.ndarray:
    """Read the compressed CSDAT encoding with cryosparc-tools; return fixed-width records."""
    from cryosparc.dataset import Dataset  # compiled; imported only when needed

    _check_csdat(path)
    try:
        dataset = Dataset.load(str(path))
        return np.asarray(dataset.to_records(fixed=True))
    except Exception as exc:  # noqa: BLE001 -- cryosparc-tools raises many types
        raise InputError(path, f"is a damaged CSDAT .cs file ({brief(exc)})",
                         "copy it again, or re-save it with cryosparc-tools") from None


def write_cs(path: str | Path, data: np.ndarray) -> None:
    """Write ``data`` as a numpy-encoded ``.cs`` file, atomically.

    Parameters
    ----------
    path
        Destination; any existing file is replaced only once the new one is complete.
    data
        Structured array ``(n,)`` with a ``uid`` field and no object fields.
    """
    if data.dtype.names is None or "uid" not in data.dtype.names:
        raise ValueError("a .cs dataset is a structured array with a 'uid' field")
    if data.dtype.hasobject:
        raise ValueError("object fields cannot be written to .cs; use fixed-length bytes")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, data, allow_pickle=False)


def decode(column: np.ndarray) -> np.ndarray:
    """Decode a fixed-length bytes column ``(n,)`` to a numpy unicode array ``(n,)``.

    Raises ``UnicodeDecodeError`` for bytes that are not UTF-8: the caller names the row
    (:mod:`csplugin.core.particles` does, with its uid).
    """
    return np.char.decode(column, "utf-8") if column.dtype.kind == "S" else column.astype(str)


def encode(strings: np.ndarray | list[str]) -> np.ndarray:
    """Encode strings ``(n,)`` to the smallest fixed-length UTF-8 bytes dtype (``|S``)."""
    return np.char.encode(np.asarray(strings, dtype=str), "utf-8")


_JOB_FILE = re.compile(r"^(?P<prefix>(?:cryosparc_P\d+_)?J\d+)_")


def find_passthrough(particles: str | Path) -> Path | None:
    """Return the passthrough file that cryoSPARC writes beside a job's particles.

    For ``J12_020_particles.cs`` (or the v2/v3 name ``cryosparc_P3_J12_020_particles.cs``)
    that is ``J12_passthrough_particles.cs`` in the same directory; for a Select 2D output
    ``particles_selected.cs`` it is ``J##_passthrough_particles_selected.cs``. Returns
    ``None`` when there is none (exported datasets carry every slot in one file).
    """
    particles = Path(particles)
    if "passthrough" in particles.name:
        return None
    match = _JOB_FILE.match(particles.name)
    prefix = match["prefix"] if match else particles.parent.name
    suffix = "_selected" if particles.stem.endswith("_selected") else ""
    candidate = particles.parent / f"{prefix}_passthrough_particles{suffix}.cs"
    return candidate if candidate.is_file() else None


def merge_passthrough(main: np.ndarray, passthrough: np.ndarray,
                      passthrough_path: str | Path = "passthrough") -> np.ndarray:
    """Add the passthrough's fields to ``main``, matching rows by ``uid`` (never by order).

    Parameters
    ----------
    main
        Structured array ``(n,)``: the job's own output; its fields win where both have one.
    passthrough
        Structured array ``(m,)`` with a row for every ``uid`` in ``main``.
    passthrough_path
        Named in the error message.

    Returns
    -------
    np.ndarray
        Structured array ``(n,)`` in ``main``'s row order with the union of the fields.
    """
    extra = [name for name in passthrough.dtype.names if name not in main.dtype.names]
    if not extra:
        return main
    order = np.argsort(passthrough["uid"], kind="stable")
    sorted_uids = passthrough["uid"][order]
    pos = np.searchsorted(sorted_uids, main["uid"])
    pos = np.clip(pos, 0, max(len(sorted_uids) - 1, 0))
    found = (sorted_uids[pos] == main["uid"]) if len(sorted_uids) else np.zeros(len(main), bool)
    if not found.all():
        raise InputError(
            passthrough_path, f"lacks {int((~found).sum())} of the {len(main)} particle uids",
            "give the passthrough file of the same job",
        )
    rows = order[pos]
    descr = [(n, main.dtype.fields[n][0]) for n in main.dtype.names]
    descr += [(n, passthrough.dtype.fields[n][0]) for n in extra]
    merged = np.empty(len(main), dtype=descr)
    for name in main.dtype.names:
        merged[name] = main[name]
    for name in extra:
        merged[name] = passthrough[name][rows]
    return merged
