"""Ctrl-C (SIGINT) and SIGTERM as exceptions, held back while a file is being written.

A signal handler raises wherever the main thread happens to be. Inside a library that holds a
lock at that moment (HDF5's, while netCDF writes a file), the exception can leave the lock held
and the next write waits for ever (seen: a SIGTERM'd sweep hanging on its next cell file). So a
*critical section* (:func:`deferred`) only records a signal that arrives during it and raises it
when the section ends, at a safe point. Everywhere else the exception is raised at once, as
Python does for Ctrl-C. :mod:`ctpc.cli.common` installs :func:`handler` for both signals.
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt. A subclass of it, so
    every cleanup written for Ctrl-C (the temporary of a file being written, a local Dask
    cluster, progress bars) also runs for SIGTERM."""


class _State:
    depth = 0              # nesting of critical sections in the main thread
    pending = None         # a signal number that arrived during one
    terminating = False    # a Terminated is on its way up: further SIGTERMs let cleanup run


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def raise_for(signum: int):
    if signum == signal.SIGTERM:
        if _State.terminating:
            return
        _State.terminating = True
        raise Terminated()
    raise KeyboardInterrupt()


def handler(signum, frame) -> None:
    """The handler of SIGINT and SIGTERM: raise now, or after the critical section."""
    if _State.depth > 0:
        _State.pending = signum
        return
    raise_for(signum)


def reset() -> None:
    _State.depth, _State.pending, _State.terminating = 0, None, False


@contextlib.contextmanager
def deferred():
    """A critical section: SIGINT/SIGTERM arriving inside it are raised when it ends."""
    if not _main_thread():
        yield
        return
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            raise_for(signum)
