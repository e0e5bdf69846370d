"""Code-generation targets: numpy (no compiler), cython (runtime, compiled per code object) and
cpp_standalone (one compiled C++ project). Sets and restores Brian2's global preferences and
device around a run, and turns a failed compile into a message that names the target and the
fallback."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

import brian2 as b2
import numpy as np
from brian2.devices.device import reset_device

from ctpc.common.errors import InputError
from ctpc.config.schema import Config

PREFS = ("codegen.target", "core.default_float_dtype", "codegen.runtime.cython.cache_dir",
         "devices.cpp_standalone.extra_make_args_unix", "core.stop_on_keyboard_interrupt")
COMPILER_ERRORS = {"CompileError", "LinkError", "CCompilerError", "DistutilsExecError",
                   "DistutilsPlatformError"}


class Brian2BuildError(InputError):
    """The generated code of a compiled target could not be built (exit code 2 on the CLI)."""


def build_dir(cfg: Config) -> Path:
    if cfg.brian2.build_dir is not None:
        return Path(cfg.brian2.build_dir).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ctpc" / "brian2"


def standalone_dir(cfg: Config, structure_hash: str) -> Path:
    """One project per network structure: a rerun with other values or run length reuses the
    compiled objects (Brian2 rewrites only the files whose content changed)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.name or "ctpc")
    return build_dir(cfg) / "cpp_standalone" / f"{name}-{cfg.dtype}-{structure_hash}"


def _built_marker(cfg: Config, structure_hash: str) -> Path:
    """An empty file that says this target has built this network structure in this cache."""
    return build_dir(cfg) / "built" / f"{cfg.brian2.target}-{cfg.dtype}-{structure_hash}"


def build_note(cfg: Config, structure_hash: str) -> str | None:
    """What a compiled target is about to do, for the user (a cold build takes minutes while
    the progress bar cannot move): None for numpy and for a structure built before."""
    target = cfg.brian2.target
    if target == "numpy" or _built_marker(cfg, structure_hash).exists():
        return None
    where = standalone_dir(cfg, structure_hash) if target == "cpp_standalone" else \
        build_dir(cfg) / "cython"
    what = ("compiling the C++ project" if target == "cpp_standalone" else
            "compiling the model's Cython code objects")
    return (f"brian2/{target}: first run of this network structure: {what} (10-300 s); it is "
            f"cached in {where} and later runs of the same structure start in seconds")


def mark_built(cfg: Config, structure_hash: str) -> None:
    if cfg.brian2.target == "numpy":
        return
    marker = _built_marker(cfg, structure_hash)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:           # a read-only cache only costs the note next time
        pass


@contextlib.contextmanager
def session(cfg: Config):
    """Brian2 prefs and device for this run; everything global is restored afterwards."""
    saved = {k: b2.prefs[k] for k in PREFS}
    target = cfg.brian2.target
    b2.prefs["codegen.target"] = "cython" if target == "cython" else "numpy"
    b2.prefs["core.default_float_dtype"] = np.float64 if cfg.dtype == "float64" else np.float32
    # Brian2's own Ctrl-C handler would end the run early as if it had finished (and ctpc would
    # then stop on "ran fewer steps than asked"); off, Ctrl-C is a KeyboardInterrupt as with the
    # torch backend: one line, exit 130, no file.
    b2.prefs["core.stop_on_keyboard_interrupt"] = False
    if target == "cython":
        cache = build_dir(cfg) / "cython"
        cache.mkdir(parents=True, exist_ok=True)
        b2.prefs["codegen.runtime.cython.cache_dir"] = str(cache)
    if target == "cpp_standalone":
        # Brian2's default "make -j" starts one compiler per file at once; bound it by the CPUs.
        b2.prefs["devices.cpp_standalone.extra_make_args_unix"] = [f"-j{os.cpu_count() or 1}"]
        b2.set_device("cpp_standalone", build_on_run=False)
    try:
        yield
    finally:
        if target == "cpp_standalone":
            b2.get_device().reinit()
            reset_device()
        for k, v in saved.items():
            b2.prefs[k] = v


@contextlib.contextmanager
def project_lock(directory: Path):
    """Two processes building the same standalone project would overwrite each other."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def compile_failure(exc: BaseException, cfg: Config, where: Path | None) -> Brian2BuildError | None:
    """A Brian2BuildError if ``exc`` is a failed compile of the generated code, else None."""
    target = cfg.brian2.target
    if target == "numpy":
        return None
    causes = list(_chain(exc))
    failed = [e for e in causes if type(e).__name__ in COMPILER_ERRORS
              or "compilation failed" in str(e).lower()
              or (target == "cython" and type(e).__name__ == "ImportError"
                  and "_cython_magic" in str(e))]
    if not failed:
        return None
    text = str(failed[0]).strip().splitlines()[0] if str(failed[0]).strip() else ""
    detail = type(failed[0]).__name__
    if text:
        detail += f": {text[:160]}{'...' if len(text) > 160 else ''}"
    compiler = os.environ.get("CXX") or os.environ.get("CC") or "the system C++ compiler (g++)"
    place = f" Build files: {where}." if where is not None else ""
    return Brian2BuildError(
        f"brian2.target {target!r}: compiling the generated code failed ({detail}). The "
        f"cython and cpp_standalone targets need a working C/C++ compiler; this run used "
        f"{compiler}.{place} Fix the compiler, or fall back to Brian2's pure-Python target: "
        f"--set brian2.target=numpy (or 'brian2: {{target: numpy}}' in the YAML).")
