"""``simulate``: config in, labelled dataset out (and a netCDF file when an output is set)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from ctpc.config.schema import Config, ConfigError
from ctpc.config.paths import OutputError
from ctpc.results.dataset import build_dataset, open_results, write_netcdf
from ctpc.build.resolve import Resolved, load_config
from ctpc.build.resolved import require_resolved
from ctpc.results.memory import MB, record_bytes, streams
from ctpc.build.objects import matmul_precision, resolve_device
from ctpc.config.paths import TRAINING_COMPANIONS, check_outputs, companion_path, run_inputs
from ctpc.results.stream import RecordStream, scratch_path


def run_backend(cfg: Config, progress: bool, stream: RecordStream | None = None):
    """Run ``cfg`` on its backend; ``stream`` (torch only) receives its records as it goes."""
    if cfg.backend == "torch":
        from ctpc.sim.backends.torch_backend import run
        options = {"stream": stream}
    else:   # imported only when asked for: Brian2 is a heavy import
        from ctpc.sim.backends.brian2_backend import run
        options = {}
    with matmul_precision(cfg):
        return run(cfg, progress=progress, **options)


def simulate(config, overrides=None, *, out: str | Path | None = None, progress: bool = False,
             command: str | None = None, overwrite: bool = False) -> xr.Dataset:
    """Run one simulation and return its ``xarray.Dataset``.

    ``config``: a YAML path, a dict or a :class:`ctpc.config.schema.Config`; ``overrides``: a list of
    ``"key.path=value"`` strings or a ``{"key.path": value}`` dict. It is loaded and resolved
    once (:func:`ctpc.build.resolve.load_config`); a config :func:`ctpc.load_config` resolved
    already is run as it is, nothing read or resolved again. The file is written when
    ``out`` (or ``config.output``) is set; the target is checked before the run starts, and an
    existing run there is refused (ConfigError) unless ``overwrite``. A diverged run is
    returned normally with ``ds.attrs["status"] == "diverged"``; check it.

    A run whose records exceed ``record.stream_mb`` streams them to disk as it goes (it needs
    an output file) and returns the written file opened lazily; otherwise the dataset is in
    memory.
    """
    cfg = load_config(config, overrides)
    _refuse_bp(cfg)
    target = out if out is not None else cfg.output
    what = "--out" if out is not None else "output"
    if target is not None:      # the one check of outputs (ctpc.config.paths), before any work
        target = check_outputs(target, what, inputs=run_inputs(cfg, config_file=cfg.config_file))
    return _run(cfg, target, what, overwrite=overwrite, progress=progress, command=command)


def run_simulation(cfg: Resolved, target: Path | None, *, what: str = "--out",
                   overwrite: bool = False, progress: bool = False,
                   command: str | None = None) -> xr.Dataset:
    """:func:`simulate` of a resolved config (:func:`ctpc.build.resolve.load_config`) to an
    output ``target`` that :func:`ctpc.config.paths.check_outputs` has checked (None: no file),
    named ``what`` in messages: what ``python -m ctpc.simulate`` runs once it has resolved its
    config and checked its output (neither happens again here)."""
    _refuse_bp(require_resolved(cfg, "run_simulation"))
    return _run(cfg, target, what, overwrite=overwrite, progress=progress, command=command)


def _run(cfg: Resolved, target: Path | None, what: str, *, overwrite: bool, progress: bool,
         command: str | None) -> xr.Dataset:
    """The run once its config is resolved and its output checked."""
    if target is not None and not overwrite:
        _refuse_existing(target, what)
    stream = None
    if streams(cfg):
        if target is None:
            raise ConfigError(
                f"record: this run records {record_bytes(cfg) / MB:.3g} MB, above "
                f"record.stream_mb = {cfg.record.stream_mb:g}, so it streams its records to its "
                "output file as it runs; give one (out=... or output:), record less "
                "(record.every, record.samples, record.variables), or raise record.stream_mb "
                "to hold them in memory")
        path = target
        free = shutil.disk_usage(path.parent).free
        if free < record_bytes(cfg):
            raise OutputError(
                f"record: this run streams {record_bytes(cfg) / MB:.3g} MB of records to a "
                f"scratch file next to {str(path)!r} (record.stream_mb = "
                f"{cfg.record.stream_mb:g}), but only {free / MB:.3g} MB are free there; free "
                "space, choose another output path, or record less (record.every, "
                "record.samples, record.variables)")
        stream = RecordStream(scratch_path(path))
    try:
        result = run_backend(cfg, progress, stream)
        ds = build_dataset(cfg, result, command)
        if target is not None:
            if stream is not None and progress:
                print(f"ctpc: writing {target} from the streamed records", file=sys.stderr)
            write_netcdf(ds, target, progress=progress and stream is not None)
            if overwrite and target.name.endswith(".nc"):
                # the run just replaced may have been a training run: its weights and
                # checkpoint belong to it, not to this simulation (removed only now that
                # the new file is in place, so a failed run loses nothing)
                for kind in TRAINING_COMPANIONS:
                    companion_path(target, kind).unlink(missing_ok=True)
    finally:
        if stream is not None:
            stream.remove()
    if stream is not None:     # the scratch file is gone: read the records from the output
        ds = open_results(target)
    if target is not None:
        ds.attrs["path"] = str(target)
    return ds


def _refuse_existing(target: Path, what: str) -> None:
    """A simulation never replaces an earlier run silently: its output, or a training run's
    companions of it (NAME.ckpt.pt, NAME.weights.npz), already there is refused."""
    found = [target] if target.exists() else []
    if target.name.endswith(".nc"):
        found += [p for p in (companion_path(target, k) for k in TRAINING_COMPANIONS)
                  if p.exists()]
    if found:
        names = ", ".join(p.name for p in found)
        raise OutputError(f"{what} {str(target)!r} already holds a run ({names}); add "
                          f"--overwrite to replace it or choose another {what} (Python API: "
                          "overwrite=True)")


def simulate_replicas(configs: list, commands: list[str | None] | None = None) -> list[xr.Dataset]:
    """Simulate configs that share every shape and control-flow setting
    (:func:`ctpc.sweep.groups.replica_key`) as replicas of one tensor program; one dataset per
    config, each equal to its own ``simulate`` to round-off. A single config (or a Brian2 one)
    runs as ``simulate`` does. Resolved configs (a sweep's cells) are run as they are; others are
    loaded and resolved first, once."""
    cfgs = [load_config(c) for c in configs]         # resolved configs are taken as they are
    commands = commands or [None] * len(cfgs)
    for cfg in cfgs:
        check_simulation(cfg, in_memory=True, machine=False)
    if len(cfgs) == 1:
        return [build_dataset(cfgs[0], run_backend(cfgs[0], False), commands[0])]
    from ctpc.sim.backends.torch_backend import run_replicas
    with matmul_precision(cfgs[0]):
        results = run_replicas(cfgs, progress=False)
    return [build_dataset(c, r, cmd) for c, r, cmd in zip(cfgs, results, commands)]


def check_simulation(cfg: Config, *, in_memory: bool = False, machine: bool = True) -> None:
    """What a simulation of ``cfg`` refuses before it starts, without building it
    (ConfigError): ``dynamics.method: bp``; with ``in_memory`` (replicas, sweep cells) records
    that would have to stream; with ``machine``, what depends on the machine that runs it: the
    device (:func:`ctpc.build.objects.resolve_device`) or, for backend brian2, Brian2's own checks
    (:func:`ctpc.sim.backends.brian2_backend.runner.check`; this imports Brian2). A sweep calls it
    for every cell before any cell runs."""
    _refuse_bp(cfg)
    if in_memory:
        _refuse_stream(cfg)
    if not machine:
        return
    if cfg.backend == "brian2":
        from ctpc.sim.backends.brian2_backend.runner import check
        check(cfg)
    else:
        resolve_device(cfg.device)


def _refuse_stream(cfg: Config) -> None:
    """Datasets returned in memory (replicas, sweep cells) cannot stream their records."""
    if streams(cfg):
        raise ConfigError(
            f"record: a run of {cfg.name or 'this config'} records {record_bytes(cfg) / MB:.3g} "
            f"MB, above record.stream_mb = {cfg.record.stream_mb:g}; replicas and sweep cells "
            "keep their records in memory. Record less (record.every, record.samples, "
            "record.variables), raise record.stream_mb, or run it alone with python -m "
            "ctpc.simulate, which streams to its output file")


def _refuse_bp(cfg: Config) -> None:
    if cfg.dynamics.method == "bp":
        raise ConfigError("dynamics.method 'bp' has no neuron dynamics to simulate: it is the "
                          "exact-gradient baseline of training (python -m ctpc.train); use pc "
                          "or pcalm here")


def summary_table(ds: xr.Dataset, max_rows: int = 24) -> str:
    """Final per-layer numbers: BP cosine of W_l, credit and residual norm of hidden layer l."""
    last = ds.isel(time=-1)
    n_w = ds.sizes["weight"]
    rows = np.arange(1, n_w + 1)
    if n_w > max_rows:   # long networks: evenly spaced rows, always the first and last
        rows = np.unique(np.linspace(1, n_w, max_rows).round().astype(int))
    lines = [f"{'layer':>6} {'bp_cos(W_l)':>12} {'bp_relerr':>10} {'credit_norm':>12} "
             f"{'res_norm':>10}"]
    for l in rows:
        cos = float(last.bp_cos.sel(weight=l))
        rel = float(last.bp_relerr.sel(weight=l))
        if l <= ds.sizes["layer"]:
            credit = f"{float(last.credit_norm.sel(layer=l)):12.4e}"
            res_txt = f"{float(last.res_norm.sel(layer=l)):10.3e}"
        else:
            credit, res_txt = f"{'(output)':>12}", f"{'':>10}"
        lines.append(f"{l:>6} {cos:12.6f} {rel:10.3e} {credit} {res_txt}")
    if len(rows) < n_w:
        lines.append(f"({len(rows)} of {n_w} layers shown; all are in the file)")
    return "\n".join(lines)


__all__ = ["simulate", "run_simulation", "simulate_replicas", "check_simulation", "summary_table",
           "ConfigError"]
