"""Sweeps: run the product of ``sweep:`` values of a model YAML on Dask, resumably, and combine
the cells into one dataset whose sweep keys are dimensions.

    python -m ctpc.sweep CONFIG.yaml [--out PATH] [--scheduler ADDRESS] [--workers N]
                                     [--set key=value ...] [--dry-run] [--quiet]

    from ctpc.sweep import run_sweep, select_cell
    ds = run_sweep("models/sweep_dt_scheme.yaml", out="runs/dt.nc")      # xarray.Dataset
    one = select_cell(ds, {"integrator.dt": 0.5, "integrator.scheme": "heun"})

Every finished cell is written at once to ``OUT.cells/<hash>.nc`` (hash of the cell's full
config and of the content of the input files it names), so a killed sweep resumes: a rerun with
the same output skips cells whose file exists and recomputes only the rest (a changed config or
a data/weights file rewritten at the same path gives new hashes, so stale cells are never
reused). A cell file that cannot be read, or that belongs to another cell, is *damaged*: the
plan says so and the run computes it again (one warning line). A crashed cell gets
``status = "error"`` and its message, writes no file and is retried by the next run; a diverged
cell is a result (``status = "diverged"``). The combined file is written atomically at the end.
Output paths (the combined file and ``OUT.cells/``) and a ``--scheduler`` address are checked
before any cluster starts. Grid syntax (including linked keys): :mod:`ctpc.sweep.grid`; what
the combined file holds: :mod:`ctpc.sweep.combine`.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import xarray as xr
from tqdm.auto import tqdm

from ..config import Config, ConfigError
from ..loading import apply_overrides, read_yaml
from ..io import (OutputError, ResultsError, check_output_path, open_results,
                  remove_stale_temporaries, write_netcdf)
from .cluster import check_scheduler_address, dask_client, local_worker_count, run_group
from .groups import group_cells
from .combine import combine, select_cell, summarize_cell, sweep_dims
from ..training import write_weights
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
    done: set[str] = field(default_factory=set)    # keys of cells with a good file
    damaged: dict[str, str] = field(default_factory=dict)   # key -> why its file is unusable
    summaries: dict = field(default_factory=dict)  # key -> summarize_cell() of a done cell

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.key}.nc"

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if c.key not in self.done]

    def state(self, cell: Cell) -> str:
        if cell.key in self.done:
            return "done"
        return "damaged, will rerun" if cell.key in self.damaged else "to run"


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
    """Validate every cell (ConfigError naming the key and cell), check the output paths, and
    find the cells already done (their files are opened and checked: a damaged one is listed in
    ``plan.damaged`` and runs again). Starts nothing and writes nothing."""
    raw = _raw_config(config, overrides)
    axes = parse_axes(raw.get("sweep"))
    if out is None:
        out = raw.get("output") or Path("runs") / f"{raw.get('name') or 'sweep'}.nc"
    out = Path(check_sweep_paths(out, create=False))
    cells = expand(raw, axes)
    plan = SweepPlan(raw, axes, cells, out, cells_dir_of(out))
    for cell in cells:
        path = plan.cell_path(cell)
        if not path.exists():
            continue
        summary, problem = _read_cell(path, cell.key)
        if problem is None:
            plan.done.add(cell.key)
            plan.summaries[cell.key] = summary
        else:
            plan.damaged[cell.key] = problem
    return plan


def cells_dir_of(out: Path) -> Path:
    return out.with_suffix(".cells")


def check_sweep_paths(out: str | Path, *, create: bool) -> Path:
    """The combined file and the cells directory ``OUT.cells/`` must be writable; checked before
    anything runs (OutputError, exit 2). ``create``: also create the parent directory and remove
    stale temporaries of a killed write of the combined file (``OUT.tmp-PID``); the cells
    directory itself is created only when a cell is about to run."""
    out = check_output_path(out, "--out", create=create)
    cells = cells_dir_of(out)
    if cells == out:
        raise OutputError(f"--out {str(out)!r}: the per-cell files go to OUT without its suffix "
                          f"+ .cells, which is the output itself; give a .nc name, e.g. "
                          f"{str(out.with_suffix('.nc'))!r}")
    if cells.exists() and not cells.is_dir():
        raise OutputError(f"--out {str(out)!r}: the per-cell files go to the directory "
                          f"{str(cells)!r}, but that is a file; move it away or choose another "
                          "--out")
    if cells.is_dir() and not os.access(cells, os.W_OK | os.X_OK):
        raise OutputError(f"--out {str(out)!r}: the cells directory {str(cells)!r} is not "
                          "writable; fix its permissions or choose another --out")
    return out


def _read_cell(path: Path, key: str):
    """(summary, None) for a good cell file, (None, why) for a damaged one: it must open, carry
    this cell's ``sweep_key`` and hold the series the combined file needs."""
    try:
        with open_results(path) as ds:
            found = ds.attrs.get("sweep_key")
            if found != key:
                return None, (f"its sweep_key is {found!r}, not {key!r}" if found else
                              "it has no sweep_key attribute (not written by this sweep)")
            return summarize_cell(ds), None
    except ResultsError:
        return None, "cannot be opened (truncated or corrupt)"
    except Exception as exc:  # noqa: BLE001 - any unreadable content marks the file damaged
        return None, f"its data cannot be read ({type(exc).__name__}: {exc})".replace("\n", " ")


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
              command: str | None = None, group: bool = True) -> xr.Dataset:
    """Run (or resume) a sweep and return the combined dataset, also written to ``out``
    (default: the config's ``output``, else ``runs/<name>.nc``). Cells are training runs when
    the config has a ``training:`` section, simulations otherwise.

    ``group``: run cells that share shapes and control flow as replicas of one tensor program
    (:mod:`ctpc.sweep.groups`); False runs every cell on its own.

    ``scheduler``: address of a running Dask scheduler; ``client``: an existing
    ``distributed.Client`` to use (e.g. shared by several sweeps); neither: a local cluster of
    ``n_workers`` processes (default: one per core, at most one per cell to run).
    """
    if n_workers is not None and (scheduler is not None or client is not None):
        raise ConfigError("n_workers (--workers) sizes the local cluster only; a cluster given "
                          "by --scheduler or client= is sized by its own workers")
    if scheduler is not None:
        check_scheduler_address(scheduler)
    plan = plan_sweep(config, overrides, out=out)
    check_sweep_paths(plan.out, create=True)
    if plan.damaged:
        names = ", ".join(f"{k}.nc ({why})" for k, why in list(plan.damaged.items())[:3])
        more = f" and {len(plan.damaged) - 3} more" if len(plan.damaged) > 3 else ""
        warnings.warn(f"{len(plan.damaged)} damaged cell file(s) in {plan.cells_dir} will be "
                      f"computed again: {names}{more}", stacklevel=2)
    errors = _run_cells(plan, scheduler=scheduler, client=client, n_workers=n_workers,
                        progress=progress, command=command, group=group)
    combined = combine(plan.axes, plan.cells, plan.summaries, errors, base_config=plan.raw,
                       cells_dir=str(plan.cells_dir), command=command)
    write_netcdf(combined, plan.out)
    combined.attrs["path"] = str(plan.out)
    return combined


def _remove_orphaned_temporaries(cells_dir: Path) -> None:
    """A sweep killed while writing a cell leaves ``<hash>.nc.tmp-PID`` (never a truncated
    ``<hash>.nc``: writes are atomic). Remove those whose writer process is gone."""
    for cell_file in {t.name.rpartition(".tmp-")[0] for t in cells_dir.glob("*.nc.tmp-*")}:
        remove_stale_temporaries(cells_dir / cell_file)


def _write_cell(plan: SweepPlan, cell: Cell, ds: xr.Dataset, weights: dict | None) -> None:
    ds.attrs["sweep_cell"] = json.dumps(cell.overrides)
    ds.attrs["sweep_key"] = cell.key
    if weights is not None:            # a training cell's final weights, beside its file
        write_weights(list(weights.values()),
                      plan.cell_path(cell).with_name(f"{cell.key}.weights.npz"))
    write_netcdf(ds, plan.cell_path(cell))
    plan.summaries[cell.key] = summarize_cell(ds)
    plan.done.add(cell.key)


def _run_cells(plan: SweepPlan, *, scheduler, client, n_workers, progress, command,
               group: bool = True) -> dict:
    """Run the cells without a good file; write each as it finishes and keep its summary in
    ``plan.summaries``. Returns crash messages."""
    todo = plan.todo
    errors: dict[str, str] = {}
    if not todo:
        return errors
    from distributed import as_completed

    workers = local_worker_count(len(todo), n_workers)
    created = not plan.cells_dir.exists()
    try:
        with dask_client(scheduler=scheduler, n_workers=workers, client=client) as dc, \
                tqdm(total=len(plan.cells), initial=len(plan.cells) - len(todo), unit="cell",
                     desc=f"sweep {plan.out.name}", disable=not progress) as bar:
            # Created once the cluster is up: a start that fails leaves no empty directory.
            plan.cells_dir.mkdir(parents=True, exist_ok=True)
            _remove_orphaned_temporaries(plan.cells_dir)
            futures = {}

            def submit(group):
                cmds = [f"{command or 'ctpc.sweep'} [cell {c.label}]" for c in group]
                fut = dc.submit(run_group, [c.config.to_dict() for c in group], cmds,
                                pure=False)
                futures[fut] = group
                return fut
            n_running = len(dc.scheduler_info().get("workers", {})) or workers
            for grp in group_cells(todo, workers=n_running, enabled=group):
                submit(grp)
            pending = as_completed(list(futures))
            for fut in pending:
                grp = futures.pop(fut)
                if fut.status != "finished" and len(grp) > 1:
                    # one bad cell must not take its group down: run the cells one by one
                    for cell in grp:
                        pending.add(submit([cell]))
                elif fut.status != "finished":
                    errors[grp[0].key] = _future_error(fut)
                    bar.write(f"cell ({grp[0].label}) crashed: {errors[grp[0].key]}",
                              file=sys.stderr)
                    bar.update(1)
                else:
                    for cell, (ds, weights) in zip(grp, fut.result()):
                        _write_cell(plan, cell, ds, weights)
                    bar.update(len(grp))
                fut.release()
    finally:
        if created and plan.cells_dir.is_dir() and not any(plan.cells_dir.iterdir()):
            plan.cells_dir.rmdir()
    return errors
