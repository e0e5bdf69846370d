"""The output paths of a run, checked once, before any work: :func:`check_outputs`.

Every command (``python -m ctpc.simulate``, ``ctpc.train``, ``ctpc.sweep``) and every API entry
point that writes (``ctpc.simulate``, ``ctpc.train``, ``ctpc.sweep.run_sweep`` with ``out=``)
goes through :func:`check_outputs`, which refuses (:class:`OutputError`, exit 2) before anything
runs:

* a path that cannot name a file: empty, a NUL byte, text that is not valid UTF-8 (netCDF needs
  UTF-8 names), a trailing ``/`` or a last component ``.``/``..`` (a directory), ``~user`` that
  cannot be expanded (``~`` is expanded everywhere, as the shell does), a name longer than the
  file system's limit (255 bytes) once the temporary suffix of its write or a companion suffix
  is added, a path longer than PATH_MAX;
* an output or companion that is an existing directory, device, FIFO or socket (a run replaces
  its output: ``--out /dev/null`` would replace the device);
* an output or companion that is one of the run's inputs (the config file, ``data.path`` and
  the IDX files in it, ``network.weights``), also through a symbolic or hard link;
* an output whose parent is a file or not writable.

**Companions** are the files a run writes beside its output ``NAME.nc``, named after it by
:func:`companion_path`: ``NAME.weights.npz`` (final weights), ``NAME.ckpt.pt`` (checkpoint),
``NAME.cells/`` (a sweep's cells). An output with companions must end in ``.nc``, so that two
outputs never share a companion (``--out a`` and ``--out a.nc`` would both own ``a.*``).

**Temporaries**: every file is written as ``NAME.tmp-PID`` (a streamed run's scratch directory:
``NAME.tmp-stream-PID``) and renamed. A process killed midway leaves its temporary;
:func:`remove_stale_temporaries` removes those of a path whose process is gone, and
:func:`check_outputs` calls it for the output and every companion.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterable

from ctpc.common.errors import InputError
from ctpc.config.schema import Config


class OutputError(InputError):
    """An output path that cannot be written (exit code 2 on the command line)."""


# What a run writes beside its output NAME.nc: NAME + suffix (companion_path).
COMPANIONS = {"weights": ".weights.npz", "checkpoint": ".ckpt.pt", "cells": ".cells"}
TRAINING_COMPANIONS = ("weights", "checkpoint")     # python -m ctpc.train, ctpc.train()
SWEEP_COMPANIONS = ("cells",)                       # python -m ctpc.sweep, run_sweep()
COMPANION_WHAT = {"weights": "weights file", "checkpoint": "checkpoint",
                  "cells": "cells directory"}
# Room a file name needs for the temporary suffix of its write: ".tmp-stream-" and a PID of up
# to 7 digits (Linux's pid_max is at most 4194304).
TEMP_ROOM = len(".tmp-stream-") + 7
NAME_MAX, PATH_MAX = 255, 4096        # when the file system does not say
# The files of an IDX directory that are a run's input (both splits; what ctpc.config.identity hashes).
IDX_INPUT_PREFIXES = ("train-", "t10k-")
# NAME.tmp-PID, NAME.tmp-stream-PID, and NAME.tmp-PID.npz (weights files of ctpc <= 0.1)
_TEMPORARY = re.compile(r"(?P<name>.+)\.tmp-(?:stream-)?(?P<pid>\d+)(?:\.npz)?")


# ----------------------------------------------------------------------------- names
def companion_path(out: str | Path, kind: str) -> Path:
    """The companion ``kind`` (``weights``, ``checkpoint``, ``cells``) of the output ``out``:
    ``NAME.nc`` -> ``NAME.weights.npz``, ``NAME.ckpt.pt``, ``NAME.cells``. Every reader and
    writer of these files names them through this function. ``out`` must end in .nc."""
    out = Path(out)
    if not out.name.endswith(".nc"):
        raise OutputError(f"{str(out)!r}: only an output whose name ends in .nc has companion "
                          f"files (NAME.nc -> NAME{COMPANIONS[kind]})")
    return out.with_name(out.name[:-len(".nc")] + COMPANIONS[kind])


def temporary(path: str | Path, pid: int | None = None) -> Path:
    """Where ``path`` is written before it is renamed: ``NAME.tmp-PID``."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid() if pid is None else pid}")


def write_failed(path: str | Path, exc: BaseException) -> OutputError:
    """The error for a write of ``path`` that failed (a full disk, permissions): says so
    plainly, and that nothing was written under that name."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    except OSError:
        free = 0
    hint = " (the disk is full)" if free < 16 * 2**20 else ""
    return OutputError(f"writing {str(path)!r} failed{hint}: {exc}. Nothing was written under "
                       "that name; free space or choose another output path")


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(temporary)`` then rename it to ``path``: an interrupted or failed write never
    leaves a truncated file under the final name, and a signal waits until the file is whole.
    A failed write (OSError, e.g. a full disk) is an :class:`OutputError`; the temporary is
    removed either way."""
    from ctpc.common import signals
    path = Path(path)
    tmp = temporary(path)
    try:
        with signals.deferred():
            write(tmp)
            os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise write_failed(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def default_output(out, output, name: str, fallback: str) -> tuple[str | Path, str]:
    """(the output path, what to call it in a message): ``out`` (--out), else the config's
    ``output``, else ``runs/<name>.nc``."""
    if out is not None:
        return out, "--out"
    if output is not None:
        return output, "output"
    return Path("runs") / f"{name or fallback}.nc", "the default output runs/<name>.nc"


# ----------------------------------------------------------------------------- inputs
def run_inputs(*cfgs: Config, config_file: str | Path | None = None) -> list[tuple[str, Path]]:
    """What runs of ``cfgs`` read, as (key, path): the config file, ``data.path`` (for an IDX
    directory also its ``train-*`` and ``t10k-*`` files) and ``network.weights``."""
    found: dict[Path, str] = {}
    if isinstance(config_file, (str, Path)) and str(config_file).strip():
        found[Path(os.path.expanduser(str(config_file)))] = "the config file"
    for cfg in cfgs:
        if cfg.data.path is not None:
            path = Path(cfg.data.path)
            found.setdefault(path, "data.path")
            if path.is_dir():
                for child in sorted(path.iterdir()):
                    if child.name.startswith(IDX_INPUT_PREFIXES):
                        found.setdefault(child, "a file of data.path")
        if cfg.network.weights is not None:
            found.setdefault(Path(cfg.network.weights), "network.weights")
    return [(key, path) for path, key in found.items()]


def _same(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are one file: the same path once symbolic links, ``..`` and ``~`` are
    resolved (also where ``a`` does not exist yet), or the same inode (a hard link)."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- checks
def _text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a path ctpc writes, or None."""
    if "\0" in text:
        return "holds a NUL byte, which no file name can hold; remove it"
    if any("\ud800" <= c <= "\udfff" for c in text):
        raw = os.fsencode(text)
        bad = bytes(b for b in raw if b >= 0x80)[:4]
        return (f"is not valid UTF-8 text (it holds the byte(s) {bad!r}, e.g. from a file name "
                "in another encoding); netCDF needs UTF-8 file names: rename it")
    return None


def _kind_of(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _limits(path: Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX of the file system ``path`` would be on."""
    for p in [path, *path.parents]:
        if os.path.exists(p):
            try:
                return os.pathconf(p, "PC_NAME_MAX"), os.pathconf(p, "PC_PATH_MAX")
            except (OSError, ValueError, AttributeError):
                break
    return NAME_MAX, PATH_MAX


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else f"{text[:n // 2]}...{text[-n // 4:]}"


def _expanded(raw: str, what: str) -> Path:
    """``raw`` checked as text and with ``~`` expanded."""
    problem = _text_problem(raw)
    if problem:
        raise OutputError(f"{what} {raw!r} {problem}")
    last = raw.replace(os.sep, "/").rstrip("/").rpartition("/")[2]
    if raw.endswith(("/", os.sep)) or last in (".", ".."):
        example = os.path.join(os.path.normpath(raw), "run.nc")
        raise OutputError(f"{what} {raw!r} names a directory (it ends in "
                          f"{'/' if raw.endswith(('/', os.sep)) else repr(last)}); give a file "
                          f"path inside it, e.g. {example!r}")
    expanded = os.path.expanduser(raw)
    if expanded.startswith("~"):
        raise OutputError(f"{what} {raw!r}: cannot expand {raw.split('/')[0]!r} (no such user, "
                          "or HOME is not set); write the path out in full")
    return Path(expanded)


def _check_lengths(path: Path, what: str, extra: int, example: str) -> None:
    name_max, path_max = _limits(path)
    absolute = Path(os.path.abspath(path))
    for part in absolute.parts[1:-1]:
        n = len(os.fsencode(part))
        if n > name_max:
            raise OutputError(f"{what} {_clip(str(path), 80)!r}: the directory name "
                              f"{_clip(part)!r} is {n} bytes long, above the file system's "
                              f"limit of {name_max} bytes per name; shorten it")
    n = len(os.fsencode(path.name))
    if n + extra > name_max:
        raise OutputError(f"{what} {_clip(str(path), 80)!r}: the file name is {n} bytes long; "
                          f"ctpc adds up to {extra} bytes to it ({example}) and the file "
                          f"system allows {name_max} bytes per name: use a name of at most "
                          f"{name_max - extra} bytes")
    total = len(os.fsencode(str(absolute))) + extra
    if total >= path_max:
        raise OutputError(f"{what} {_clip(str(path), 80)!r}: the path is {total - extra} bytes "
                          f"long (absolute, + {extra} for {example}), above the limit of "
                          f"{path_max - 1} bytes; choose a shorter path")


def _check_target(path: Path, what: str, target: Path, label: str | None, kind: str | None,
                  inputs: list[tuple[str, Path]]) -> None:
    """One file (or, for ``kind == 'cells'``, directory) a run writes: not an input, not an
    existing file of the wrong type."""
    about = f"{what} {str(path)!r}" + (f": {label} {str(target)!r}" if label else "")
    for key, source in inputs:
        if _same(target, source):
            how = "" if os.path.abspath(target) == os.path.abspath(source) else \
                " (the same file, through a link)"
            raise OutputError(f"{about} is {key} {str(source)!r}{how}: the run would "
                              "overwrite its own input; choose another output path (or copy "
                              "the input elsewhere first)")
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise OutputError(f"{about}: cannot be inspected ({exc.strerror}); choose another "
                          "output path") from None
    if kind == "cells":
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{what} {str(path)!r}: the per-cell files go to the directory "
                              f"{str(target)!r}, but that is "
                              f"{'a file' if stat.S_ISREG(st.st_mode) else _kind_of(st)}; move "
                              "it away or choose another --out")
        if not os.access(target, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {str(path)!r}: the cells directory {str(target)!r} is "
                              "not writable; fix its permissions or choose another --out")
        return
    if stat.S_ISDIR(st.st_mode):
        if label is None:
            raise OutputError(f"{what} {str(path)!r} is a directory; give a file path inside "
                              f"it, e.g. {str(path / 'run.nc')!r}")
        raise OutputError(f"{about} is a directory; move it away or choose another output path")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{about} {'exists and ' if label is None else ''}is {_kind_of(st)}, "
                          "not a regular file; a run replaces the files it writes, so give a "
                          "path that does not exist yet or is a regular file")


def check_outputs(out: str | Path, what: str = "--out", *,
                  inputs: Iterable[tuple[str, Path]] = (), companions: Iterable[str] = (),
                  also: Iterable[tuple[str, Path]] = (), create: bool = True) -> Path:
    """Check, before any work, that a run may write ``out`` (labelled ``what`` in messages:
    ``--out``, ``output``...) and its ``companions`` (kinds of :data:`COMPANIONS`), and the
    files ``also`` names as (label, path) (a sweep's cell files); ``inputs`` (from
    :func:`run_inputs`) are what the run reads. Returns ``out`` with ``~`` expanded. With
    ``create`` (a run, not a dry run): creates the parent directory and removes stale
    temporaries of earlier killed writes of every one of these files. Raises
    :class:`OutputError` naming the path and the fix. See the module docstring."""
    if str(out).strip() == "":
        raise OutputError(f"{what}: empty path; give a file name such as runs/run.nc")
    path = _expanded(str(out), what)
    companions, inputs, also = tuple(companions), list(inputs), list(also)
    # the longest name written from the output's: NAME.nc.tmp-stream-PID, or a companion's
    # temporary (NAME.weights.npz.tmp-PID: 9 bytes more than NAME.nc, then .tmp-PID)
    grow, example = TEMP_ROOM, "NAME.nc.tmp-stream-PID"
    for k in companions:
        extra = len(COMPANIONS[k]) - len(".nc") + len(".tmp-") + 7
        if k != "cells" and extra > grow:
            grow, example = extra, f"NAME{COMPANIONS[k]}.tmp-PID"
    _check_lengths(path, what, grow, example)
    if os.path.isdir(path):
        raise OutputError(f"{what} {str(path)!r} is a directory; give a file path inside it, "
                          f"e.g. {str(path / 'run.nc')!r}")
    _check_target(path, what, path, None, None, inputs)
    if companions and not path.name.endswith(".nc"):
        names = ", ".join(f"NAME{COMPANIONS[k]}{'/' if k == 'cells' else ''}"
                          for k in companions)
        better = path.with_suffix(".nc") if path.suffix else path.with_name(path.name + ".nc")
        raise OutputError(f"{what} {str(path)!r}: the files written beside the output are "
                          f"named after it (NAME.nc -> {names}), so its name must end in .nc; "
                          f"give e.g. {str(better)!r}")
    for parent in [path.parent, *path.parent.parents]:
        if os.path.exists(parent):
            if not os.path.isdir(parent):
                raise OutputError(f"{what} {str(path)!r}: {str(parent)!r} is a file, not a "
                                  "directory; choose another output path")
            break
    targets = [(path, None, None)]          # (the output checked above, as the first)
    targets += [(companion_path(path, k), f"its {COMPANION_WHAT[k]}", k) for k in companions]
    targets += [(Path(p), label, None) for label, p in also]
    for target, label, kind in targets[1:]:
        _check_target(path, what, target, label, kind, inputs)
    existing = path.parent
    for parent in [path.parent, *path.parent.parents]:
        if os.path.exists(parent):
            existing = parent
            break
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{what} {str(path)!r}: cannot create its directory "
                              f"({exc.strerror}); choose a writable location") from None
        existing = path.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {str(path)!r}: directory {str(existing)!r} is not "
                          "writable; choose a writable location or fix its permissions")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {str(path)!r} exists and is read-only; remove it or choose "
                          "another output path")
    if create:      # (the files of ``also`` are in a directory of their own: see
        keep = [p for _, p in inputs]                 # remove_stale_temporaries_in)
        for target, _, kind in targets[:1 + len(companions)]:
            if kind != "cells":
                remove_stale_temporaries(target, keep=keep)
    return path


# ----------------------------------------------------------------------------- temporaries
def writer_alive(pid: int) -> bool:
    """Whether process ``pid`` (the writer of a temporary) still runs."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(path: str | Path, keep: Iterable[Path] = ()) -> None:
    """A write killed midway leaves ``NAME.tmp-PID`` (or ``NAME.tmp-stream-PID``, a streamed
    run's scratch directory; never a truncated ``NAME``: writes are atomic). Remove those of
    ``path`` whose writer process is gone; never one of ``keep`` (a run's inputs)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    keep = list(keep)
    for tmp in path.parent.glob(f"{glob_escape(path.name)}.tmp-*"):
        found = _TEMPORARY.fullmatch(tmp.name)
        if found is None or found["name"] != path.name or writer_alive(int(found["pid"])):
            continue
        if any(_same(tmp, k) for k in keep):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def remove_stale_temporaries_in(directory: str | Path, keep: Iterable[Path] = ()) -> None:
    """:func:`remove_stale_temporaries` for every file of ``directory`` (a sweep's cells)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    names = {m["name"] for t in directory.glob("*.tmp-*")
             if (m := _TEMPORARY.fullmatch(t.name)) is not None}
    for name in names:
        remove_stale_temporaries(directory / name, keep)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters quoted."""
    return re.sub(r"([*?\[])", r"[\1]", name)
