"""Helpers of the reliability tests: run a command in-process and check its exit and message."""
from __future__ import annotations


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
