"""The command line's last line of defence: a bug is one line (exit 1) unless --debug asks
for the traceback; a refused system call is one line naming the file (exit 2)."""

from __future__ import annotations

import subprocess
import sys

from csplugin.synthetic import SyntheticJob

PATCHED = """
import sys
import csplugin.jobs.info as info
def broken(*args, **kwargs):
    raise {error}
info.inspect = broken
sys.argv = ["csplugin", *sys.argv[1:]]
from csplugin.app.cli import main
main()
"""


def _run(error: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PATCHED.format(error=error), *args],
                          capture_output=True, text=True)


def test_a_bug_is_one_line_and_debug_shows_the_traceback(job: SyntheticJob) -> None:
    plain = _run("ZeroDivisionError('simulated')", "info", str(job.particles_star))
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [
        "internal error: ZeroDivisionError: simulated -- a bug in csplugin; run again with "
        "--debug for the traceback and report it"]
    debug = _run("ZeroDivisionError('simulated')", "--debug", "info", str(job.particles_star))
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_a_refused_system_call_names_the_file(job: SyntheticJob) -> None:
    done = _run("PermissionError(13, 'Permission denied', '/data/x.mrcs')", "info",
                str(job.particles_star))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: /data/x.mrcs: Permission denied")
