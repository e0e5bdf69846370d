"""The command-line layer shared by ``python -m ctpc.simulate``, ``ctpc.train`` and
``ctpc.sweep``: common arguments, exit codes, one-line errors and warnings, Ctrl-C.

Exit codes (the same for every command):

    0    finished (a sweep: every cell ok or diverged)
    1    unexpected error (a bug: please report it with the traceback); a sweep: some cells crashed
    2    bad configuration, arguments or input file: the message names the key or file and the fix
    3    the run diverged; what it computed up to then is written
    130  interrupted (Ctrl-C / SIGINT); what was finished is kept
    143  terminated (SIGTERM, e.g. from kill or a batch scheduler); handled like Ctrl-C

An interrupt or SIGTERM prints one line, no traceback, with the command that continues the run
(:func:`rerun_command`). The file being written is never left
truncated: writes go to ``NAME.tmp-PID`` and are renamed at the end; the temporary is removed on
the way out, or by the next run of the same output when the process was killed (SIGKILL).
"""
from __future__ import annotations

import _thread
import argparse
import contextlib
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable

from ctpc.common import signals
from ctpc.common.errors import InputError
from ctpc.common.signals import Terminated

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 128 + signal.SIGTERM      # 143, the shell's convention for "killed by TERM"
EXIT_CODES_EPILOG = ("Exit codes: 0 ok, 1 unexpected error, 2 bad configuration or input, "
                     "3 diverged, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).")


REDELIVERY_DELAY_S = 0.01
_previous_hook = [sys.__unraisablehook__]


def _redeliver_dropped_interrupts(unraisable) -> None:
    """Python drops (prints as "Exception ignored in ...") an exception raised inside a weakref
    callback or ``__del__``, and a signal handler runs wherever the main thread happens to be:
    a Ctrl-C or SIGTERM that lands there would be lost and the run would go on (seen with
    Brian2, whose set-up runs many weakref callbacks). Deliver the signal again instead, from
    a timer thread a moment later, so that it is handled once the callback has returned (if it
    lands in another such callback, it comes back here)."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        if isinstance(exc, Terminated):
            signals._State.terminating = False
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        timer = threading.Timer(REDELIVERY_DELAY_S, _thread.interrupt_main, args=(signum,))
        timer.daemon = True
        timer.start()
    else:
        _previous_hook[0](unraisable)


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM raises Terminated like Ctrl-C raises KeyboardInterrupt, both held back inside
    critical sections (:mod:`ctpc.common.signals`); neither can be lost in a callback whose exceptions
    Python drops. Main thread only (where signals are handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signals.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver_dropped_interrupts
    signals.reset()
    _previous_hook[0] = previous_hook
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = previous_hook


def add_run_arguments(p: argparse.ArgumentParser, *, out_help: str) -> None:
    """CONFIG, --set, --out, --device, --quiet: what every command takes."""
    p.add_argument("config", help="model YAML, e.g. models/pcalm_deep.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set integrator.dt=0.5 (repeatable)")
    p.add_argument("--out", help=out_help)
    p.add_argument("--threads", type=threads_arg, default="auto", metavar="N|auto",
                   help="CPU threads for torch (default: auto = one thread when a step is too "
                        "small to share, else the physical cores other processes leave free; "
                        "docs/benchmarks.md, 'Threads')")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run at the output (without it, a run that would "
                        "replace one is refused)")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but warnings and errors (no progress bar, summary, "
                        "status or 'wrote' line)")


def threads_arg(text: str) -> int | str:
    """``--threads``: a count >= 1 or 'auto'."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or 'auto', got {text!r}")
    return n


def device_override(args) -> list[str]:
    return [f"device={args.device}"] if getattr(args, "device", None) else []


def command_line(module: str) -> str:
    """What the user typed, for the output's ``history`` attribute."""
    return " ".join([Path(sys.executable).name, "-m", module, *sys.argv[1:]])


def rerun_command(module: str, argv: list[str] | None, *, add: tuple[str, ...] = (),
                  drop: tuple[str, ...] = ()) -> str:
    """The command that runs ``module`` with ``argv`` (default: what the user typed) again,
    shell-quoted, with the flags ``drop`` removed (an abbreviation argparse accepted too) and
    the flags ``add`` appended where absent: e.g. a training run's command plus --resume."""
    args = list(sys.argv[1:] if argv is None else argv)
    flag = lambda a, f: a.startswith("--") and len(a) > 3 and f.startswith(a.split("=")[0])
    args = [a for a in args if not any(flag(a, f) for f in drop)]
    args += [f for f in add if not any(flag(a, f) for a in args)]
    return shlex.join([Path(sys.executable).name, "-m", module, *map(str, args)])


def say(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"ctpc: warning: {message}", file=sys.stderr)


def run_main(prog: str, body: Callable[[], int], *, rerun: str | None = None) -> int:
    """Run a command's body with the shared error handling: ConfigError -> its message and
    exit 2; Ctrl-C -> one line and exit 130; SIGTERM -> one line and exit 143; user warnings as
    one plain line each. ``rerun``: the end of the interrupt line, e.g. "to continue, run:
    python -m ctpc.train ... --resume" (default: rerun the same command)."""
    rerun = rerun or "rerun the same command to continue where it applies"
    with warnings.catch_warnings(), _signals_as_interrupts():   # both restored on return
        warnings.showwarning = _print_warning
        try:
            return body()
        except InputError as exc:
            say(prog, str(exc))
            return EXIT_CONFIG
        except Terminated:
            say(prog, f"terminated (SIGTERM); finished work is kept, no partial file is left; "
                      f"{rerun}")
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            say(prog, f"interrupted; finished work is kept, no partial file is left; {rerun}")
            return EXIT_INTERRUPTED


def show_warnings_plainly() -> None:
    """Call after importing a library that re-routes warnings (Brian2 sends them to its log)."""
    warnings.showwarning = _print_warning
