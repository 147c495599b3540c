"""Bad input and real-world files, tried through the command line as a new user would
(issue 11 "Silently wrong or lost" 1, 4, 5, 6 and "Tracebacks today"; issue 15 items 1-6).

Each trial copies what it needs (a synthetic job, real files from ``fixtures/real``, header
variants made from them) into its own directory, runs one ``csplugin`` command in-process
(``csplugin.app.cli.main``, as the console script does) and asserts: the exit status; no
traceback and at most one line on stderr for a refusal (``info`` describes on stdout); the
expected words in the message; nothing left behind (a refusal leaves no file at all, a
success nothing outside its ``-o`` target); every input byte for byte unchanged; and, where the
trial has one, a check of the result itself. ``docs/reliability.md`` ("Bad input and
real-world files") is this table; ``python tests/app/test_trials.py`` prints its rows.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from formats.cs import read_cs, write_cs
from formats.star import read_star

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
CS = "project/J3/J3_020_particles.cs"
PT = "project/J3/J3_passthrough_particles.cs"
STAR = "project/particles.star"
STACK0 = "project/J2/extract/mic000_particles.mrcs"


# ----------------------------------------------------------------------------- running

@dataclass
class Outcome:
    exit: int
    stdout: str
    stderr: str
    left: list[str]
    changed: list[str]
    traceback: bool
    argv: list[str] = field(default_factory=list)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def message(self) -> str:
        lines = self.err_lines or [line for line in self.stdout.splitlines() if line.strip()]
        return " / ".join(lines[:2]) if lines else ""


def _files(root: Path) -> dict[str, str]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir() and not any(path.iterdir()):
            out[str(path.relative_to(root)) + "/"] = "dir"
    return out


def run_cli(ws: Path, argv: list[str]) -> tuple[int, str, str, bool]:
    """Run ``csplugin ARGV`` in ``ws`` in this process; (exit, stdout, stderr, traceback)."""
    from csplugin.app import options
    from csplugin.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    old_files = options.out._file, options.err._file  # another test may have pinned them
    sys.argv = ["csplugin", *argv]
    os.chdir(ws)
    code, traceback = 0, False
    try:
        options.out.file, options.err.file = out, err
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # escaped the top-level handler: a traceback for the user
        code, traceback = 1, True
        err.write(f"Traceback (most recent call last): {type(exc).__name__}: {exc}\n")
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        options.out._file, options.err._file = old_files
    text = err.getvalue()
    return code, out.getvalue(), text, traceback or "Traceback" in text


def _target(argv: list[str]) -> str | None:
    return argv[argv.index("-o") + 1] if "-o" in argv else None


def run_trial(trial: "Trial", ws: Path, base: Path) -> tuple[Outcome, list[str]]:
    """Prepare ``ws`` (synthetic job under ws/project, real files under ws/real), run the
    trial's command; returns the outcome and the failures (empty when the trial passes)."""
    shutil.copytree(base / "project", ws / "project")
    for name in trial.real:
        (ws / "real" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REAL / name, ws / "real" / name)
    try:
        argv = trial.setup(ws)
        before = _files(ws)
        code, out, err, tb = run_cli(ws, argv)
        after = _files(ws)
    finally:
        _unmount(ws)
    target = _target(argv)
    left = sorted(set(after) - set(before))
    if code == 0 and target is not None:
        tpath = (ws / target).resolve()
        left = [p for p in left if not ((ws / p.rstrip("/")).resolve() == tpath
                                         or tpath in (ws / p.rstrip("/")).resolve().parents)]
    changed = sorted(p for p in before if after.get(p) != before[p])
    outcome = Outcome(code, out, err, left, changed, tb, argv)
    failures = []
    if code != trial.exit:
        failures.append(f"exit {code}, expected {trial.exit}")
    if tb:
        failures.append("traceback")
    if code != 0 and len(outcome.err_lines) > 1:
        failures.append(f"{len(outcome.err_lines)} stderr lines")
    if trial.text and trial.text.lower() not in (out + err).lower():
        failures.append(f"message lacks {trial.text!r}")
    if left:
        failures.append(f"left behind: {left[:3]}")
    if changed:
        failures.append(f"input changed: {changed[:3]}")
    if trial.check is not None and code == 0:
        problem = trial.check(ws, outcome)
        if problem:
            failures.append(problem)
    return outcome, failures


class Skip(Exception):
    """A trial that this machine cannot stage (e.g. no permission to mount a small tmpfs)."""


def _mount_tmpfs(where: Path, options: str) -> None:
    import subprocess
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise Skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")


def _unmount(ws: Path) -> None:
    import subprocess
    for name in ("full", "ro"):
        if os.path.ismount(ws / name):
            subprocess.run(["umount", str(ws / name)], capture_output=True)


@dataclass
class Trial:
    id: str
    title: str
    setup: Callable[[Path], list[str]]
    exit: int
    text: str | None = None
    check: Callable[[Path, Outcome], str | None] | None = None
    real: tuple[str, ...] = ()
    slow: bool = False
    marks: tuple = field(default_factory=tuple)


# ----------------------------------------------------------------------------- variants

def _edit_star(ws: Path, name: str, edit: Callable[[list[str]], list[str]],
               out: str | None = None) -> str:
    lines = (ws / name).read_text().splitlines()
    target = out or name
    (ws / target).write_text("\n".join(edit(lines)) + "\n")
    return target


def _particle_rows(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if "@" in line and not line.startswith("_")]


def _set_value(lines: list[str], row: int, column: int, value: str) -> list[str]:
    rows = _particle_rows(lines)
    values = lines[rows[row]].split()
    values[column] = value
    lines[rows[row]] = " ".join(values)
    return lines


def _column(lines: list[str], label: str) -> int:
    labels = [line.split()[0] for line in lines if line.startswith("_rln")]
    block = []  # labels of the particles block: the last loop before the first particle row
    first = _particle_rows(lines)[0]
    for line in lines[:first]:
        if line.startswith("loop_"):
            block = []
        elif line.startswith("_"):
            block.append(line.split()[0])
    assert "_" + label in labels, label
    return block.index("_" + label)


def _edit_cs(ws: Path, name: str, out: str, edit: Callable[[np.ndarray], np.ndarray]) -> str:
    write_cs(ws / out, edit(read_cs(ws / name)))
    return out


def _drop(data: np.ndarray, *fields: str) -> np.ndarray:
    keep = [n for n in data.dtype.names if n not in fields]
    out = np.empty(len(data), dtype=[(n, data.dtype[n]) for n in keep])
    for n in keep:
        out[n] = data[n]
    return out


def _mrc(path: Path) -> tuple[bytearray, bytes, bytes]:
    raw = path.read_bytes()
    head = bytearray(raw[:1024])
    nsymbt = int(np.frombuffer(head[92:96], "<i4")[0])
    return head, raw[1024:1024 + nsymbt], raw[1024 + nsymbt:]


def _big_endian(src: Path, dst: Path, mode: int | None = None) -> None:
    """``src`` (little-endian, mode 2) written big-endian (machine stamp 0x11 0x11), in
    ``mode`` 1 (int16 of round(100 x value)) when asked."""
    head, ext, body = _mrc(src)
    data = np.frombuffer(body, "<f4")
    if mode == 1:
        head[12:16] = np.int32(1).tobytes()
        data = np.round(data * 100).astype("<i2")
    words = np.frombuffer(bytes(head[:224]), "<i4").copy()
    swap = [i for i in range(56) if i not in (52, 53)]
    out = bytearray(head)
    out[:224] = words.tobytes()
    for i in swap:
        out[4 * i:4 * i + 4] = bytes(out[4 * i:4 * i + 4])[::-1]
    out[212:216] = b"\x11\x11\x00\x00"
    dst.write_bytes(bytes(out) + ext + data.astype(data.dtype.newbyteorder(">")).tobytes())


def _little_mode1(src: Path, dst: Path) -> None:
    head, ext, body = _mrc(src)
    head[12:16] = np.int32(1).tobytes()
    data = np.round(np.frombuffer(body, "<f4") * 100).astype("<i2")
    dst.write_bytes(bytes(head) + ext + data.tobytes())


def _same_export(ws: Path, reference_argv: list[str], ref_dir: str, new_dir: str,
                 atol: float = 0.0) -> str | None:
    code, _, err, _ = run_cli(ws, reference_argv)
    if code != 0:
        return f"reference export failed: {err.strip()}"
    a = sorted((ws / ref_dir).glob("*.mrcs"))
    b = sorted((ws / new_dir).glob("*.mrcs"))
    if len(a) != len(b) or not a:
        return "different stacks"
    for x, y in zip(a, b):
        _, _, dx = _mrc(x)
        _, _, dy = _mrc(y)
        vx, vy = np.frombuffer(dx, "<f4"), np.frombuffer(dy, "<f4")
        if vx.shape != vy.shape or not np.allclose(vx, vy, rtol=0, atol=atol):
            return f"{y.name} differs from the little-endian / plain export"
    return None


# ----------------------------------------------------------------------------- checks

def _relion_euler(rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray) -> np.ndarray:
    a, b, g = np.deg2rad(rot), np.deg2rad(tilt), np.deg2rad(psi)
    ca, cb, cg, sa, sb, sg = np.cos(a), np.cos(b), np.cos(g), np.sin(a), np.sin(b), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
                     np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
                     np.stack([sc, ss, cb], -1)], -2)


def check_3d(ws: Path, _: Outcome) -> str | None:
    from scipy.spatial.transform import Rotation
    star = read_star(ws / "out.star")
    parts = star.get("particles")
    cs = read_cs(ws / "real/cryodrgn/cryosparc_P12_J24_001_particles.cs")
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        if label not in parts:
            return f"no {label} in the .star"
    a = _relion_euler(parts["rlnAngleRot"].to_numpy(float), parts["rlnAngleTilt"].to_numpy(float),
                      parts["rlnAnglePsi"].to_numpy(float))
    r = Rotation.from_rotvec(cs["alignments3D/pose"].astype(float)).as_matrix()
    if not np.allclose(a, np.transpose(r, (0, 2, 1)), atol=1e-4):
        return "RELION matrix != R(pose)^T"
    shift = cs["alignments3D/shift"] * cs["alignments3D/psize_A"][:, None]
    if not np.allclose(parts["rlnOriginXAngst"].to_numpy(float), shift[:, 0], atol=1e-3):
        return "origins are not the 3D shifts"
    return None


def check_no_alignment_columns(ws: Path, _: Outcome) -> str | None:
    parts = read_star(ws / "out.star")["particles"]
    extra = [c for c in parts.columns if c.startswith(("rlnAngle", "rlnOrigin", "rlnClass"))]
    return f"alignment columns invented: {extra}" if extra else None


def check_box_320(ws: Path, _: Outcome) -> str | None:
    shape = read_cs(ws / "out.cs")["blob/shape"]
    return None if np.all(shape == 320) else f"blob/shape {shape[0]}"


def check_star_readable(name: str, run_from: str = ""
                        ) -> Callable[[Path, Outcome], str | None]:
    """The written ``.star`` holds the 90 particles for csplugin's reader and starfile, and
    RELION run from ``ws/run_from`` reads it and every image it names."""
    def check(ws: Path, _: Outcome) -> str | None:
        import starfile
        path = ws / name
        ours = read_star(path)["particles"]
        theirs = starfile.read(path)
        theirs = theirs["particles"] if isinstance(theirs, dict) else theirs
        if len(ours) != 90 or len(theirs) != 90:
            return f"read back {len(ours)} / {len(theirs)} particles, expected 90"
        return _relion_reads(ws / run_from, path.absolute(), True)
    return check


def _relion_reads(ws: Path, path: Path, images: bool) -> str | None:
    """RELION 3.1 (where installed) reads ``path`` (relion_star_handler) and, with
    ``images``, every image it names (relion_stack_create, run from ``ws``)."""
    import subprocess
    if not shutil.which("relion_star_handler"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["relion_star_handler", "--i", str(path), "--o",
                               f"{tmp}/check.star"], capture_output=True, text=True, cwd=ws)
        if done.returncode != 0:
            return f"relion_star_handler: {done.stderr.strip()[-200:]}"
        if images and shutil.which("relion_stack_create"):
            done = subprocess.run(["relion_stack_create", "--i", str(path), "--o",
                                   f"{tmp}/check"], capture_output=True, text=True, cwd=ws)
            if done.returncode != 0 or not Path(f"{tmp}/check.mrcs").is_file():
                return f"relion_stack_create: {(done.stderr + done.stdout).strip()[-200:]}"
    return None


def check_export_equals(reference_argv: list[str], ref_dir: str, new_dir: str = "out",
                        atol: float = 0.0) -> Callable[[Path, Outcome], str | None]:
    def check(ws: Path, _: Outcome) -> str | None:
        problem = _same_export(ws, reference_argv, ref_dir, new_dir, atol)
        shutil.rmtree(ws / ref_dir, ignore_errors=True)
        return problem
    return check


def check_from_project(ws: Path, _: Outcome) -> str | None:
    """RELION run from the project directory (as the note says) reads every image."""
    return _relion_reads(ws / "project", (ws / "conv.star").absolute(), True)


def check_roundtrip_groups(ws: Path, _: Outcome) -> str | None:
    a = read_star(ws / "real/cryodrgn/relion31.6opticsgroups.star")
    b = read_star(ws / "back.star")
    ga = a["particles"]["rlnOpticsGroup"].to_numpy(int)
    gb = b["particles"]["rlnOpticsGroup"].to_numpy(int)
    if not np.array_equal(ga, gb):
        return f"{int(np.sum(ga != gb))} optics group numbers changed"
    for label in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if label not in b["optics"] or not np.allclose(a["optics"][label].to_numpy(float),
                                                       b["optics"][label].to_numpy(float)):
            return f"{label} lost or changed"
    return None


def check_uids(ws: Path, _: Outcome) -> str | None:
    a, b = read_cs(ws / CS), read_cs(ws / "back.cs")
    return None if np.array_equal(np.sort(a["uid"]), np.sort(b["uid"])) else "uids regenerated"


def check_class0(ws: Path, _: Outcome) -> str | None:
    back = read_star(ws / "back.star")["particles"]
    if "rlnClassNumber" not in back or not (back["rlnClassNumber"].to_numpy(int) == 0).all():
        return "rlnClassNumber 0 column lost"
    return None


def check_coordinates(ws: Path, out: Outcome) -> str | None:
    """Carried as location/center_*_frac, or (micrographs absent, so their shape unknown)
    not carried and said so: never invented."""
    data = read_cs(ws / "out.cs")
    if "location/center_x_frac" in data.dtype.names:
        return None
    return None if "rlnCoordinateX/Y not written" in out.stderr else \
        "rlnCoordinateX/Y silently dropped"


def check_not_helical(ws: Path, out: Outcome) -> str | None:
    return "reported as helical" if "helical" in out.stdout.lower() and \
        "not helical" not in out.stdout.lower() else None


# ----------------------------------------------------------------------------- trials

def _psi_prior(ws: Path) -> list[str]:
    def edit(lines: list[str]) -> list[str]:
        first = _particle_rows(lines)[0]
        n = sum(1 for line in lines[:first] if line.startswith("_rln")) - 8  # optics has 8
        lines.insert(first, f"_rlnAnglePsiPrior #{n + 1}")
        for i in _particle_rows(lines):
            lines[i] += " 0.0"
        return lines
    return ["info", _edit_star(ws, STAR, edit, "project/prior.star")]


def _no_at(ws: Path) -> list[str]:
    """Particle 1 named ``J2/extract/mic000_particles.mrcs`` (no ``N@``): RELION would read
    the whole 46-section file as one 3D volume."""
    def edit(lines: list[str]) -> list[str]:
        first = _particle_rows(lines)[0]
        lines[first] = lines[first].split("@", 1)[1]
        return lines
    return ["export-aligned", _edit_star(ws, STAR, edit, "project/noat.star"), "-o", "out"]


def _no_pixel(ws: Path) -> list[str]:
    def edit(lines: list[str]) -> list[str]:
        out = [line for line in lines if not line.startswith(("_rlnMagnification",
                                                              "_rlnDetectorPixelSize"))]
        return [" ".join(line.split()[:8]) if "@" in line else line for line in out]
    return _edit_star(ws, "real/cryodrgn/empiar_10076_7.star", edit, "real/cryodrgn/nopix.star")


def _replace_stack(ws: Path, data: bytes) -> None:
    (ws / STACK0).write_bytes(data)


def _mode1_header(ws: Path) -> list[str]:
    head, ext, body = _mrc(ws / STACK0)
    head[12:16] = np.int32(1).tobytes()
    _replace_stack(ws, bytes(head) + ext + body)
    return ["export-aligned", STAR, "-o", "out"]


def _grown(ws: Path) -> list[str]:
    _replace_stack(ws, (ws / STACK0).read_bytes() + b"\0" * 4096)
    return ["export-aligned", STAR, "-o", "out"]


def _truncated(command: str) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        raw = (ws / STACK0).read_bytes()
        _replace_stack(ws, raw[:len(raw) - 5000])
        return [command, STAR] + (["-o", "out"] if command != "info" else [])
    return setup


def _corrupt(ws: Path) -> list[str]:
    head, ext, body = _mrc(ws / STACK0)
    head[12:16] = np.int32(99).tobytes()
    _replace_stack(ws, bytes(head) + ext + body)
    return ["info", STAR]


def _past_end(command: str) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        col = 0
        target = _edit_star(ws, STAR, lambda ls: _set_value(
            ls, 3, col, "000099@J2/extract/mic000_particles.mrcs"), "project/past.star")
        return [command, target] + (["-o", "out"] if command != "info" else [])
    return setup


def _star_value(label: str, row: int, value: str, command: str = "export-aligned"
                ) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        lines = (ws / STAR).read_text().splitlines()
        col = _column(lines, label)
        target = _edit_star(ws, STAR, lambda ls: _set_value(ls, row, col, value),
                            "project/bad.star")
        return [command, target, "-o", "out"]
    return setup


def _garbage_line(ws: Path) -> list[str]:
    def edit(lines: list[str]) -> list[str]:
        i = _particle_rows(lines)[10]
        lines[i] = " ".join(lines[i].split()[:5])
        return lines
    return ["export-aligned", _edit_star(ws, STAR, edit, "project/bad.star"), "-o", "out"]


def _cs_edit(edit: Callable[[np.ndarray], np.ndarray], command: str = "export-aligned",
             extra: tuple[str, ...] = ()) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        _edit_cs(ws, CS, "project/J3/J3_bad_particles.cs", edit)
        out = "out.star" if command == "convert" else "out"
        return [command, "project/J3/J3_bad_particles.cs", "--passthrough", PT, "-o", out,
                *extra]
    return setup


def _inf_shift(data: np.ndarray) -> np.ndarray:
    data = data.copy()
    data["alignments2D/shift"][7, 0] = np.inf
    return data


def _space_stack(ws: Path) -> list[str]:
    src = ws / STACK0
    src.rename(src.with_name("mic 000_particles.mrcs"))
    def edit(data: np.ndarray) -> np.ndarray:
        data = data.copy()
        paths = np.array([p.replace(b"mic000", b"mic 000") for p in data["blob/path"]])
        dtype = [(n, paths.dtype if n == "blob/path" else data.dtype[n]) for n in data.dtype.names]
        out = np.empty(len(data), dtype=dtype)
        for n in data.dtype.names:
            out[n] = paths if n == "blob/path" else data[n]
        return out
    _edit_cs(ws, CS, CS, edit)
    return ["export-aligned", CS, "-o", "out"]


def _no_ctf(extra: tuple[str, ...], command: str = "convert") -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        (ws / PT).rename(ws / "project" / "elsewhere_passthrough.cs")
        out = "out.star" if command == "convert" else "out"
        return [command, CS, "-o", out, *extra]
    return setup


CTF_OPTIONS = ("--voltage", "300", "--cs", "2.7", "--amplitude-contrast", "0.1")


def _variant(make: Callable[[Path, Path], None], name: str = "relion31.mrcs"
             ) -> Callable[[Path], list[str]]:
    """relion31.star whose stack is replaced by a variant of itself (original kept as
    orig.mrcs, referenced by orig.star for the reference export)."""
    def setup(ws: Path) -> list[str]:
        d = ws / "real/cryodrgn"
        shutil.copy2(d / "relion31.mrcs", d / "orig.mrcs")
        (d / "orig.star").write_text((d / "relion31.star").read_text()
                                     .replace("@relion31.mrcs", "@orig.mrcs"))
        make(d / "orig.mrcs", d / name)
        if name != "relion31.mrcs":
            (d / "variant.star").write_text((d / "relion31.star").read_text()
                                            .replace("@relion31.mrcs", "@" + name))
            return ["export-aligned", "real/cryodrgn/variant.star", "-o", "out"]
        return ["export-aligned", "real/cryodrgn/relion31.star", "-o", "out"]
    return setup


def _mode1_pair(src: Path, dst: Path) -> None:
    _big_endian(src, dst, mode=1)
    _little_mode1(src, src)  # the reference: the same int16 values, little-endian


def _extended(src: Path, dst: Path) -> None:
    head, ext, body = _mrc(src)
    head[92:96] = np.int32(2048).tobytes()
    head[104:108] = b"FEI1"
    dst.write_bytes(bytes(head) + bytes(range(256)) * 8 + body)


def _non_square(src: Path, dst: Path) -> None:
    head, ext, body = _mrc(src)
    data = np.frombuffer(body, "<f4").reshape(5, 256, 256)[:, :200, :]
    head[4:8] = np.int32(200).tobytes()
    head[32:36] = head[40:44] = np.float32(200 * 2.806).tobytes()
    dst.write_bytes(bytes(head) + ext + np.ascontiguousarray(data).tobytes())


def _bz2(src: Path, dst: Path) -> None:
    import bz2
    dst.write_bytes(bz2.compress(src.read_bytes(), compresslevel=1))


def _voxel0(src: Path, dst: Path) -> None:
    head, ext, body = _mrc(src)
    head[40:52] = np.zeros(3, "<f4").tobytes()  # cella 0: voxel size 0
    dst.write_bytes(bytes(head) + ext + body)


def _gzip(src: Path, dst: Path) -> None:
    dst.write_bytes(gzip.compress(src.read_bytes(), compresslevel=1))


def _voxel0_with_star(ws: Path) -> list[str]:
    return ["convert", "real/cryodrgn/empiar_10076_7.star", "-o", "out.cs"]


def check_psize(ws: Path, _: Outcome) -> str | None:
    psize = read_cs(ws / "out.cs")["blob/psize_A"]
    return None if np.allclose(psize, 5e4 / 38168, rtol=1e-5) else f"blob/psize_A {psize[0]}"



def _roundtrip(first: list[str], second: list[str]) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        code, _, err, _ = run_cli(ws, first)
        assert code == 0, err
        return second
    return setup


def _class0(ws: Path) -> list[str]:
    lines = (ws / STAR).read_text().splitlines()
    col = _column(lines, "rlnClassNumber")
    for row in range(90):
        lines = _set_value(lines, row, col, "0")
    (ws / "project/class0.star").write_text("\n".join(lines) + "\n")
    code, _, err, _ = run_cli(ws, ["convert", "project/class0.star", "-o", "project/class0.cs"])
    assert code == 0, err
    return ["convert", "project/class0.cs", "-o", "back.star"]


def _nan_pixels(ws: Path) -> list[str]:
    head, ext, body = _mrc(ws / STACK0)
    data = np.frombuffer(body, "<f4").copy()
    data[64 * 64 * 3 + 100] = np.nan
    _replace_stack(ws, bytes(head) + ext + data.tobytes())
    return ["export-aligned", STAR, "-o", "out"]


def _reexport(ws: Path) -> list[str]:
    """A previous export in out/, and a copy of its .star beside it as the new input."""
    code, _, err, _ = run_cli(ws, ["export-aligned", STAR, "-o", "out", "-q"])
    assert code == 0, err
    shutil.copy2(ws / "out/particles.star", ws / "copy.star")
    return ["export-aligned", "copy.star", "-o", "out", "--overwrite", "-q"]


def _mixed_pixels(ws: Path) -> list[str]:
    text = (ws / STAR).read_text()
    optics = "1 opticsGroup1 0.10000000 2.70000000 300.00000000 1.50000000 64 2"
    assert optics in text
    text = text.replace(optics, optics + "\n2 opticsGroup2 0.10000000 2.70000000 300.00000000 "
                        "1.60000000 64 2")
    lines = text.splitlines()
    rows = _particle_rows(lines)
    lines[rows[5]] = lines[rows[5]][:-1] + "2"
    (ws / "project/mixed.star").write_text("\n".join(lines) + "\n")
    return ["export-aligned", "project/mixed.star", "-o", "out"]


def check_same_star(ws: Path, _: Outcome) -> str | None:
    a, b = read_star(ws / STAR), read_star(ws / "again.star")
    for block in ("optics", "particles"):
        for label in a[block].columns:
            if label not in b[block]:
                return f"{label} lost"
            x, y = a[block][label], b[block][label]
            if x.dtype.kind in "fi" and not np.allclose(x.to_numpy(float), y.to_numpy(float)):
                return f"{label} changed"
    return None


def _existing_output(command: str) -> Callable[[Path], list[str]]:
    """A first run writes ``out``; the trial runs the same job again without --overwrite."""
    def setup(ws: Path) -> list[str]:
        code, _, err, _ = run_cli(ws, [command, CS, "-o", "out", "-q"])
        assert code == 0, err
        return [command, CS, "-o", "out", "-q"]
    return setup


def _plain(*argv: str) -> Callable[[Path], list[str]]:
    return lambda ws: list(argv)


def _dir_target(ws: Path) -> list[str]:
    (ws / "adir").mkdir()
    (ws / "adir" / "x.txt").write_text("x\n")
    return ["convert", CS, "-o", "adir"]


def _unwritable(ws: Path) -> list[str]:
    return ["convert", CS, "-o", "/proc/csplugin_trial/out.star"]


def _read_only(ws: Path) -> list[str]:
    if os.geteuid() != 0:
        (ws / "ro").mkdir()
        (ws / "ro").chmod(0o555)
    else:
        _mount_tmpfs(ws / "ro", "ro,size=64k")
    return ["convert", CS, "-o", "ro/out.star"]


def _disk_full(command: str) -> Callable[[Path], list[str]]:
    """Output on a 256 KiB tmpfs: the 1.5 MB of aligned stacks cannot fit."""
    def setup(ws: Path) -> list[str]:
        _mount_tmpfs(ws / "full", "size=256k")
        return [command, CS, "-o", "full/out", "-q"]
    return setup


def _brackets(ws: Path) -> list[str]:
    (ws / "project").rename(ws / "run [old]")
    (ws / "project").mkdir()  # the base copy is expected there; left empty
    return ["export-aligned", "run [old]/particles.star", "-o", "out [old]", "-q"]


def check_bracket_message(ws: Path, out: Outcome) -> str | None:
    return None if "out [old]/particles.star" in out.stderr.replace("\n", "") else \
        f"message does not name 'out [old]': {out.stderr.strip()!r}"


R = "real/"
TOMO = ("cylindra/Class3D_run_it025_data.star", "cylindra/Refine3D_run_it050_data.star",
        "cryodrgn/sta_testing_bin8.star", "starfile/one_loop.star",
        "cryoet-data-portal/relion_4_star.star", "cryoet-data-portal/relion_3_star.star",
        "cryoet-data-portal/stopgap_star.star")

RELION31 = ("cryodrgn/relion31.star", "cryodrgn/relion31.mrcs")
EMPIAR_STAR = ("cryodrgn/empiar_10076_7.star", "cryodrgn/empiar_10076_7.mrc")
PFCRT = "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star"
#: The variant's export equals the export of the original stack (orig.mrcs) bit for bit.
SAME_AS_ORIGINAL = check_export_equals(["export-aligned", "real/cryodrgn/orig.star", "-o", "ref"],
                                       "ref")

TRIALS: list[Trial] = [
    # issue 11, silently wrong or lost
    Trial("11.1a", "3D refinement .cs (real) -> .star keeps rot/tilt/psi and 3D shifts",
          _plain("convert", R + "cryodrgn/cryosparc_P12_J24_001_particles.cs", "-o", "out.star"),
          0, check=check_3d, real=("cryodrgn/cryosparc_P12_J24_001_particles.cs",)),
    Trial("11.1b", ".cs with alignments2D/shift but no pose -> .star",
          _cs_edit(lambda d: _drop(d, "alignments2D/pose"), "convert"), 2, "alignments2D/pose"),
    Trial("11.1c", ".cs without alignments (real import) -> .star invents none",
          _plain("convert", R + "cryodrgn/empiar_10076_7.cs", "-o", "out.star"), 0,
          check=check_no_alignment_columns,
          real=("cryodrgn/empiar_10076_7.cs", "cryodrgn/empiar_10076_7.mrc")),
    Trial("11.1d", "export-aligned of that converted alignment-free .star",
          _roundtrip(["convert", R + "cryodrgn/empiar_10076_7.cs", "-o", R + "cryodrgn/c.star"],
                     ["export-aligned", R + "cryodrgn/c.star", "-o", "out"]), 2, "align",
          real=("cryodrgn/empiar_10076_7.cs", "cryodrgn/empiar_10076_7.mrc")),
    Trial("11.4a", "float32 stack under a mode-1 header", _mode1_header, 2, "mic000_particles"),
    Trial("11.4b", "stack 4096 B larger than its header says", _grown, 2, "mic000_particles"),
    Trial("11.4c", "truncated stack, export-aligned", _truncated("export-aligned"), 2,
          "mic000_particles"),
    Trial("11.5a", "info on a truncated stack", _truncated("info"), 2, "mic000_particles"),
    Trial("11.5b", "info on a stack with a corrupt header (mode 99)", _corrupt, 2,
          "mic000_particles"),
    Trial("11.5c", "info with an index past the end of a stack", _past_end("info"), 2, "98"),
    Trial("11.5d", "export-aligned with an index past the end", _past_end("export-aligned"), 2,
          "98"),
    Trial("11.6a", "RELION 3.0 star (real, with stack) -> .cs takes the box from the stack",
          _plain("convert", R + "cryodrgn/empiar_10076_7.star", "-o", "out.cs"), 0,
          check=check_box_320, real=EMPIAR_STAR),
    Trial("11.6b", "RELION 3.0 star (real) without its stacks -> .cs",
          _plain("convert", R + PFCRT, "-o", "out.cs"), 2, "box", real=(PFCRT,)),
    # issue 11, tracebacks today
    Trial("11.T1", "NaN rlnAnglePsi in a .star", _star_value("rlnAnglePsi", 40, "nan"), 2,
          "rlnAnglePsi"),
    Trial("11.T2", "inf alignments2D/shift in a .cs", _cs_edit(_inf_shift), 2,
          "alignments2D/shift"),
    Trial("11.T3", "non-numeric value in rlnOriginXAngst",
          _star_value("rlnOriginXAngst", 12, "abc"), 2, "rlnOriginXAngst"),
    Trial("11.T4", ".cs without alignments2D/shift",
          _cs_edit(lambda d: _drop(d, "alignments2D/shift")), 2, "alignments2D/shift"),
    Trial("11.T5", ".star line with too few values", _garbage_line, 2, "line"),
    Trial("11.T6", "convert into a missing directory (created)",
          _plain("convert", CS, "-o", "new/sub/out.star"), 0),
    Trial("11.T7", "convert into a directory that cannot be made", _unwritable, 2,
          "/proc/csplugin_trial"),
    Trial("11.T7b", "convert into a read-only directory", _read_only, 2, "ro"),
    Trial("11.T8", "convert -o onto an existing directory", _dir_target, 2, "adir"),
    Trial("11.T9", "export-aligned into a path with a space; RELION and starfile read it",
          _plain("export-aligned", STAR, "-o", "out dir"), 0,
          check=check_star_readable("out dir/particles.star")),
    Trial("11.T10", "stack named with a space (.cs blob/path) -> export-aligned", _space_stack, 0,
          check=check_star_readable("out/particles.star")),
    Trial("11.T10b", "input and output paths with brackets ('run [old]', 'out [old]')", _brackets,
          0, check=check_bracket_message),
    Trial("11.T10c", "missing input named with rich markup ('x[/]y.star')",
          _plain("info", "x[/]y.star"), 2, "x[/]y.star"),
    Trial("11.T10d", "export-aligned onto a full disk (256 KiB tmpfs)",
          _disk_full("export-aligned"), 2, "full"),
    Trial("11.T10e", "power-spectrum onto a full disk (256 KiB tmpfs)",
          _disk_full("power-spectrum"), 2, "full"),
    Trial("11.T11", "power-spectrum --psi-bin 0", _plain("power-spectrum", CS, "-o", "out",
                                                          "--psi-bin", "0"), 2, "psi-bin"),
    Trial("11.T12", "export-aligned --particles-per-stack 0",
          _plain("export-aligned", CS, "-o", "out", "--particles-per-stack", "0"), 2,
          "particles-per-stack"),
    Trial("11.T13", "classify --n-nbor 1", _plain("classify", CS, "-o", "out", "--n-nbor", "1"),
          2, "n-nbor"),
    Trial("11.T14", "power-spectrum --pad 9", _plain("power-spectrum", CS, "-o", "out", "--pad",
                                                     "9"), 2, "pad"),
    Trial("11.T15", "classify into an existing output without --overwrite",
          _existing_output("classify"), 2, "--overwrite"),
    Trial("11.T16", "class-averages into an existing output without --overwrite",
          _existing_output("class-averages"), 2, "--overwrite"),
    Trial("11.T17", "classify of a .star with a NaN angle",
          _star_value("rlnAnglePsi", 5, "nan", "classify"), 2, "rlnAnglePsi"),
    Trial("11.T18", "class-averages with a non-numeric class",
          _star_value("rlnClassNumber", 5, "x", "class-averages"), 2, "rlnClassNumber"),
    Trial("11.T19", "classify (writes neighbors.npz, summary.json whole)",
          _plain("classify", CS, "-o", "out", "-q"), 0, slow=True),
    # more bad input, as a new user would give it
    Trial("11.X1", "--classes naming a class the file lacks",
          _plain("export-aligned", CS, "-o", "out", "--classes", "7"), 2, "7"),
    Trial("11.X2", "--passthrough of another job (no uid in common)",
          _plain("export-aligned", CS, "--passthrough", R + "cryodrgn/empiar_10076_7.cs", "-o",
                 "out"), 2, "uid", real=("cryodrgn/empiar_10076_7.cs",)),
    Trial("11.X3", "--project-dir that does not exist",
          _plain("export-aligned", CS, "--project-dir", "nowhere", "-o", "out"), 2, "nowhere"),
    Trial("11.X4", "empty .star", lambda ws: (ws / "e.star").write_text("") and [] or
          ["convert", "e.star", "-o", "out.cs"], 2, "e.star"),
    Trial("11.X5", "binary garbage named .star", lambda ws: (ws / "g.star").write_bytes(
        bytes(range(256)) * 20) and [] or ["info", "g.star"], 2, "g.star"),
    Trial("11.X6", "stack with NaN pixels", _nan_pixels, 2, "NaN"),
    Trial("11.X7", "convert onto its own input with --overwrite",
          _plain("convert", STAR, "-o", STAR, "--overwrite"), 2, "is an input of this job"),
    Trial("11.X8", "export-aligned of project/particles.star -o project --overwrite",
          _plain("export-aligned", STAR, "-o", "project", "--overwrite", "-q"), 2,
          "is an input of this job"),
    Trial("11.X8b", "classify of project/particles.star -o project --n-classes 3 --overwrite",
          _plain("classify", STAR, "-o", "project", "--n-classes", "3", "--overwrite", "-q"), 2,
          "is an input of this job"),
    Trial("11.X8c", "export-aligned of a .star naming out/'s stacks -o out --overwrite",
          _reexport, 2, "is an input of this job"),
    Trial("11.X9", "export-aligned -o the stacks' own directory, --overwrite",
          _plain("export-aligned", CS, "-o", "project/J2/extract", "--overwrite", "-q"), 0),
    Trial("11.X10", "mixed pixel sizes in one .star", _mixed_pixels, 2, "pixel size"),
    Trial("11.X11", ".star -> .star (same format again) keeps every value",
          _plain("convert", STAR, "-o", "again.star"), 0, check=check_same_star),
    # issue 15
    *[Trial(f"15.1{chr(97 + i)}", f"{cmd} of tomography file {name}",
            _plain(cmd, R + name, "-o", "out" if cmd != "convert" else "out.cs"), 2,
            None, real=(name,))
      for i, (cmd, name) in enumerate(zip(
          ("export-aligned", "convert", "export-aligned", "convert", "power-spectrum",
           "class-averages", "classify"), TOMO))],
    *[Trial(f"15.1i{i}", f"info on tomography file {name}", _plain("info", R + name), 2,
            "tomo" if "stopgap" not in name and "sta_" not in name else None, real=(name,))
      for i, name in enumerate(TOMO)],
    Trial("15.1j", "several-section stack named without N@", _no_at, 2, "mic000_particles"),
    Trial("15.1k", "info on the same", lambda ws: ["info", _no_at(ws)[1]], 2, "mic000_particles"),
    Trial("15.2a", "header voxel size 0 (real) and no pixel size in the star",
          lambda ws: ["export-aligned", _no_pixel(ws), "-o", "out"], 2, "pixel size",
          real=EMPIAR_STAR),
    Trial("15.2b", "convert of the same", lambda ws: ["convert", _no_pixel(ws), "-o", "out.cs"],
          2, "pixel size", real=EMPIAR_STAR),
    Trial("15.2c", "header voxel size 0 (real), pixel size in the star: convert takes the star's",
          _voxel0_with_star, 0, check=check_psize, real=EMPIAR_STAR),
    Trial("15.2d", "big-endian mode-2 stack (real images) = little-endian export",
          _variant(lambda s, d: _big_endian(s, d), "be.mrcs"), 0,
          check=SAME_AS_ORIGINAL, real=RELION31),
    Trial("15.2e", "big-endian mode-1 stack = little-endian mode-1 export",
          _variant(_mode1_pair, "be1.mrcs"), 0,
          check=SAME_AS_ORIGINAL, real=RELION31),
    Trial("15.2f", "gzip-compressed stack under its .mrcs name", _variant(_gzip), 2, "compress",
          real=RELION31),
    Trial("15.2g", "stack with a 2048-byte extended header = plain export",
          _variant(_extended, "ext.mrcs"), 0,
          check=SAME_AS_ORIGINAL, real=RELION31),
    Trial("15.2f2", "bzip2-compressed stack under its .mrcs name", _variant(_bz2), 2, "compress",
          real=RELION31),
    Trial("15.2i", "header voxel size 0, pixel size in the star: export = original",
          _variant(_voxel0, "v0.mrcs"), 0, check=SAME_AS_ORIGINAL, real=RELION31),
    Trial("15.2j", "info on the big-endian stack's star", lambda ws: [
        "info", _variant(lambda s, d: _big_endian(s, d), "be.mrcs")(ws)[1]], 0, "yes",
          real=RELION31),
    Trial("15.2h", "non-square stack (256 x 200) under a 256 px star", _variant(_non_square), 2,
          "relion31.mrcs", real=RELION31),
    Trial("15.3a", ".cs without ctf (no passthrough) -> .star", _no_ctf(()), 2, "--voltage"),
    Trial("15.3b", "the same with --voltage --cs --amplitude-contrast; RELION reads it",
          _no_ctf(CTF_OPTIONS), 0, check=check_star_readable("out.star", "project")),
    Trial("15.3d", ".cs -> .star written outside the project: says where RELION must run",
          _plain("convert", CS, "-o", "conv.star"), 0, "relative to", check=check_from_project),
    Trial("15.3c", "export-aligned of the ctf-less .cs", _no_ctf((), "export-aligned"), 2,
          "--voltage"),
    Trial("15.4a", "star -> cs -> star keeps 6 optics groups and voltage/Cs/Q0 (real)",
          _roundtrip(["convert", R + "cryodrgn/relion31.6opticsgroups.star", "-o", "mid.cs"],
                     ["convert", "mid.cs", "-o", "back.star"]), 0, check=check_roundtrip_groups,
          real=("cryodrgn/relion31.6opticsgroups.star",)),
    Trial("15.4b", "cs -> star -> cs keeps uids", _roundtrip(
        ["convert", CS, "-o", "mid.star"], ["convert", "mid.star", "-o", "back.cs"]), 0,
        check=check_uids),
    Trial("15.4c", "rlnClassNumber 0 kept through .cs", _class0, 0, check=check_class0),
    Trial("15.4d", "rlnCoordinateX/Y into .cs (real RELION 5 star, micrographs absent)",
          _plain("convert", R + "cryodrgn/relion5.star", "-o", "out.cs"), 0,
          check=check_coordinates, real=("cryodrgn/relion5.star",)),
    Trial("15.4e", "non-helical star with rlnAnglePsiPrior: info", _psi_prior, 0,
          check=check_not_helical),
    Trial("15.5a", "optics table, particles without rlnOpticsGroup (real): info",
          _plain("info", R + "cryodrgn/toy_projections_13.star"), 2, "missing",
          real=("cryodrgn/toy_projections_13.star",)),
    Trial("15.5b", "the same: convert", _plain("convert", R + "cryodrgn/toy_projections_13.star",
                                              "-o", "out.cs"), 0,
          real=("cryodrgn/toy_projections_13.star",)),
    *[Trial(f"15.6{chr(97 + i)}", f"{cmd} of {name}", _plain(
        cmd, R + name, *(("-o", "out.cs") if cmd == "convert" else ())), 2, text, real=(name,))
      for i, (cmd, name, text) in enumerate((
          ("info", "cylindra/Class3D_job.star", "job.star"),
          ("convert", "starfile/default_pipeline.star", "pipeline"),
          ("info", "starfile/postprocess.star", "post-processing"),
          ("convert", "starfile/run_it025_optimiser_2D.star", "optimiser"),
          ("info", "starfile/run_it025_sampling_2D.star", "sampling"),
          ("convert", "cryosparc-tools/job096_run_data.star", "LFS"),
          ("info", "cylindra/tomograms.star", "tomograms"),
          ("convert", "cylindra/tilt_series_13pf_MT.star", "tilt-series"),
          ("info", "cylindra/Class3D_run_it025_optimisation_set.star", "optimisation set"),
          ("convert", "cryosparc-tools/4k_dataset.cs", "blob"),
          ("convert", "cryodrgn/toymodel_small_nocenter.mrc", "MRC"),
          ("info", "cylindra/Picks_particles.star", "tomograms")))],
]


# ----------------------------------------------------------------------------- pytest

@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from csplugin.synthetic import make_job
    root = tmp_path_factory.mktemp("trial_base")
    make_job(root, n_per_class=30, box=64, seed=3)
    return root


@pytest.mark.parametrize("trial", [pytest.param(t, id=t.id, marks=[pytest.mark.slow] if t.slow
                                                else []) for t in TRIALS])
def test_trial(trial: Trial, base: Path, tmp_path: Path) -> None:
    try:
        outcome, failures = run_trial(trial, tmp_path / "ws", base)
    except Skip as exc:
        pytest.skip(str(exc))
    assert not failures, f"{trial.title}: {failures}; stderr: {outcome.stderr[-600:]}"


# ----------------------------------------------------------------------------- the table

def main() -> None:
    from csplugin.synthetic import make_job
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        make_job(base, n_per_class=30, box=64, seed=3)
        for trial in TRIALS:
            ws = Path(tmp) / trial.id
            try:
                outcome, failures = run_trial(trial, ws, base)
            except Exception as exc:  # the trial's own setup failed, or it cannot be staged here
                print(f"| {trial.id} | {trial.title} | not run: {exc} |")
                continue
            command = "csplugin " + " ".join(f"'{a}'" if " " in a else a for a in outcome.argv)
            message = outcome.message.replace("|", "\\|")[:140]
            verdict = "pass" if not failures else "FAIL: " + "; ".join(failures)
            changed = "yes: " + ", ".join(outcome.changed) if outcome.changed else "no"
            print(f"| {trial.id} | {trial.title} | `{command}` | {outcome.exit} | "
                  f"{len(outcome.err_lines)} | {message} | "
                  f"{', '.join(outcome.left) or 'nothing'} | {changed} | {verdict} |")
            shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
