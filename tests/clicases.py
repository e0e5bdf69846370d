"""Helpers of the reliability tests: run a command in-process and check its exit and message."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def cli(main, argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of an in-process command; argparse errors exit through SystemExit.
    No user error may print a traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def check(code, err, want_code, needles, *, max_lines: int | None = None):
    """The exit code is ``want_code`` and every needle is in stderr; with ``max_lines``, an
    error (exit 2) is a message of at most that many lines, not a dump."""
    assert code == want_code, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    if max_lines is not None and want_code == 2:
        assert len(err.strip().splitlines()) <= max_lines, err


# Root reads and writes through file permissions because it holds CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH. Dropping both (util-linux setpriv) gives a root process the same
# permission checks as any user, so the permission cases run as root too (CI runs as root).
ROOTED = hasattr(os, "geteuid") and os.geteuid() == 0
DAC_CAPS = "-dac_override,-dac_read_search"


def cli_with_permissions(module: str, main, argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m module argv`` under ordinary file permissions: in
    process for a normal user; as root, in a child process without the two capabilities that
    bypass permissions."""
    if not ROOTED:
        return cli(main, argv, capsys)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux setpriv to drop CAP_DAC_OVERRIDE")
    proc = subprocess.run([setpriv, f"--inh-caps={DAC_CAPS}", f"--bounding-set={DAC_CAPS}",
                           sys.executable, "-m", module, *map(str, argv)],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stderr
