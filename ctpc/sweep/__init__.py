"""Sweeps: run the product of ``sweep:`` values of a model YAML on Dask, resumably, and combine
the cells into one dataset whose sweep keys are dimensions.

    python -m ctpc.sweep CONFIG.yaml [--out PATH] [--scheduler ADDRESS] [--workers N]
                                     [--set key=value ...] [--dry-run] [--quiet]

    from ctpc.sweep import run_sweep, select_cell
    ds = run_sweep("models/sweep_dt_scheme.yaml", out="runs/dt.nc")      # xarray.Dataset
    one = select_cell(ds, {"integrator.dt": 0.5, "integrator.scheme": "heun"})

Every finished cell is written at once to ``OUT.cells/<hash>.nc`` (hash of the cell's full
config), so a killed sweep resumes: a rerun with the same output skips cells whose file exists
and recomputes only the rest (a changed config gives new hashes, so stale cells are never
reused). A crashed cell gets ``status = "error"`` and its message, writes no file and is retried
by the next run; a diverged cell is a result (``status = "diverged"``). The combined file is
written atomically at the end. Grid syntax (including linked keys): :mod:`ctpc.sweep.grid`;
what the combined file holds: :mod:`ctpc.sweep.combine`.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import xarray as xr
from tqdm.auto import tqdm

from ..config import Config, ConfigError
from ..loading import apply_overrides, read_yaml
from ..io import open_results, write_netcdf
from .cluster import dask_client, local_worker_count, run_cell
from .combine import combine, select_cell, summarize_cell, sweep_dims
from .grid import Axis, Cell, expand, parse_axes

__all__ = ["SweepPlan", "plan_sweep", "run_sweep", "select_cell", "sweep_dims"]


@dataclass
class SweepPlan:
    """A validated sweep: its axes, every cell, and where results go."""
    raw: dict                         # the base config (with its sweep: section)
    axes: list[Axis]
    cells: list[Cell]
    out: Path
    cells_dir: Path
    done: set[str] = field(default_factory=set)    # keys of cells whose file exists

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.key}.nc"

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if c.key not in self.done]


def _raw_config(config, overrides) -> dict:
    if isinstance(config, Config):
        raw = config.to_dict()
    elif isinstance(config, dict):
        raw = dict(config)
    else:
        raw = read_yaml(config)
        raw.setdefault("name", Path(config).stem)
    return apply_overrides(raw, overrides)


def plan_sweep(config: Union[str, Path, dict, Config], overrides=None, *,
               out: str | Path | None = None) -> SweepPlan:
    """Validate every cell (ConfigError naming the key and cell) and find the cached ones.
    Starts nothing."""
    raw = _raw_config(config, overrides)
    axes = parse_axes(raw.get("sweep"))
    cells = expand(raw, axes)
    out = Path(out or raw.get("output") or Path("runs") / f"{raw.get('name') or 'sweep'}.nc")
    plan = SweepPlan(raw, axes, cells, out, out.with_suffix(".cells"))
    plan.done = {c.key for c in cells if plan.cell_path(c).exists()}
    return plan


def _describe_error(exc: BaseException, tb) -> str:
    where = ""
    if tb is not None:
        frames = traceback.extract_tb(tb)
        if frames:
            where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def _future_error(fut) -> str:
    if fut.status == "error":
        return _describe_error(fut.exception(), fut.traceback())
    return f"task {fut.status} (did a worker or the scheduler go away?)"


def run_sweep(config: Union[str, Path, dict, Config], overrides=None, *,
              out: str | Path | None = None, scheduler: str | None = None, client=None,
              n_workers: int | None = None, progress: bool = True,
              command: str | None = None) -> xr.Dataset:
    """Run (or resume) a sweep and return the combined dataset, also written to ``out``
    (default: the config's ``output``, else ``runs/<name>.nc``).

    ``scheduler``: address of a running Dask scheduler; ``client``: an existing
    ``distributed.Client`` to use (e.g. shared by several sweeps); neither: a local cluster of
    ``n_workers`` processes (default: one per core, at most one per cell to run).
    """
    if n_workers is not None and (scheduler is not None or client is not None):
        raise ConfigError("n_workers (--workers) sizes the local cluster only; a cluster given "
                          "by --scheduler or client= is sized by its own workers")
    plan = plan_sweep(config, overrides, out=out)
    errors = _run_cells(plan, scheduler=scheduler, client=client, n_workers=n_workers,
                        progress=progress, command=command)
    summaries = {}
    for cell in plan.cells:
        if cell.key in errors:
            continue
        with open_results(plan.cell_path(cell)) as ds:
            summaries[cell.key] = summarize_cell(ds)
    combined = combine(plan.axes, plan.cells, summaries, errors, base_config=plan.raw,
                       cells_dir=str(plan.cells_dir), command=command)
    write_netcdf(combined, plan.out)
    combined.attrs["path"] = str(plan.out)
    return combined


def _remove_orphaned_temporaries(cells_dir: Path) -> None:
    """A sweep killed while writing a cell leaves ``<hash>.nc.tmp-PID`` (never a truncated
    ``<hash>.nc``: writes are atomic). Remove those whose writer process is gone."""
    for tmp in cells_dir.glob("*.nc.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_cells(plan: SweepPlan, *, scheduler, client, n_workers, progress, command) -> dict:
    """Run the cells without a file; write each as it finishes. Returns crash messages."""
    todo = plan.todo
    errors: dict[str, str] = {}
    if not todo:
        return errors
    from distributed import as_completed

    plan.cells_dir.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temporaries(plan.cells_dir)
    workers = local_worker_count(len(todo), n_workers)
    with dask_client(scheduler=scheduler, n_workers=workers, client=client) as dc, \
            tqdm(total=len(plan.cells), initial=len(plan.cells) - len(todo), unit="cell",
                 desc=f"sweep {plan.out.name}", disable=not progress) as bar:
        futures = {}
        for cell in todo:
            cmd = f"{command or 'ctpc.sweep'} [cell {cell.label}]"
            futures[dc.submit(run_cell, cell.config.to_dict(), cmd, pure=False)] = cell
        for fut in as_completed(futures):
            cell = futures.pop(fut)
            if fut.status != "finished":
                errors[cell.key] = _future_error(fut)
                bar.write(f"cell ({cell.label}) crashed: {errors[cell.key]}", file=sys.stderr)
            else:
                ds = fut.result()
                ds.attrs["sweep_cell"] = json.dumps(cell.overrides)
                ds.attrs["sweep_key"] = cell.key
                write_netcdf(ds, plan.cell_path(cell))
                plan.done.add(cell.key)
            fut.release()
            bar.update(1)
    return errors
