"""Sweeps: run the product of ``sweep:`` values of a model YAML on Dask, resumably, and combine
the cells into one dataset whose sweep keys are dimensions.

    python -m ctpc.sweep CONFIG.yaml [--out PATH] [--scheduler ADDRESS] [--workers N]
                                     [--set key=value ...] [--dry-run] [--quiet]

    from ctpc.sweep import run_sweep, select_cell
    ds = run_sweep("models/sweeps/depth_methods.yaml", out="runs/depth.nc")      # xarray.Dataset
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
before any cluster starts. Grid syntax (including linked keys): :mod:`ctpc.sweep.cells`; what
the combined file holds: :mod:`ctpc.sweep.combine`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import xarray as xr
from tqdm.auto import tqdm

from ctpc.common.errors import InputError
from ctpc.config.schema import Config, ConfigError
from ctpc.config.load import apply_overrides, override_items, read_yaml
from ctpc.results.dataset import ResultsError, open_results, write_netcdf
from ctpc.config.paths import (SWEEP_COMPANIONS, check_outputs, companion_path, default_output,
    remove_stale_temporaries_in, run_inputs)
from ctpc.sweep.cluster import (check_cell, check_cells, check_scheduler_address, dask_client,
    local_worker_count, run_group)
from ctpc.sweep.groups import group_cells
from ctpc.sweep.combine import combine, select_cell, summarize_cell, sweep_dims
from ctpc.training import write_weights
from ctpc.sweep.cells import Axis, Cell, expand, parse_axes

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
    inputs: list = field(default_factory=list)     # (key, path): what the cells read

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.key}.nc"

    def cell_weights_path(self, cell: Cell) -> Path:
        """A training cell's final weights, ``<key>.weights.npz`` beside its file."""
        return companion_path(self.cell_path(cell), "weights")

    def cell_files(self) -> list[tuple[str, Path]]:
        """(label, path) of every file the cells write (checked like the output)."""
        files = []
        for cell in self.cells:
            files.append(("the cell file", self.cell_path(cell)))
            if cell.config.training is not None:
                files.append(("the cell's weights file", self.cell_weights_path(cell)))
        return files

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
    return apply_overrides(*_swept_values_set_in_place(raw, overrides))


def _swept_values_set_in_place(raw: dict, overrides) -> tuple[dict, object]:
    """``--set sweep.KEY=[...]`` for a KEY the file's sweep section has, however it writes it
    (dotted, nested, a linked group): the values replace that entry's where it stands (its
    dimension keeps its place). Applied as usual, the override would arrive nested, which
    beside the file's dotted ``KEY:`` is the same key given twice (refused by parse_axes).
    Returns the config and the overrides left for apply_overrides; for a KEY that is a section
    (``--set sweep.integrator={...}``), the file's entries inside it are dropped first."""
    spec = raw.get("sweep")
    items = override_items(overrides)
    if not isinstance(spec, dict) or not any(k.startswith("sweep.") for k, _, _ in items):
        return raw, overrides
    spec = copy.deepcopy(spec)
    rest = []

    def leaves(section: dict, prefix: str = ""):
        for name, value in section.items():
            full = _key_text(f"{prefix}{name}")
            if isinstance(value, dict):
                yield from leaves(value, f"{full}.")
            else:
                yield section, name, full
    for dotted, value, text in items:
        target = _key_text(dotted[len("sweep."):]) if dotted.startswith("sweep.") else None
        found = [(sec, name) for sec, name, full in leaves(spec) if full == target]
        if target is not None and found:
            for sec, name in found:
                sec[name] = value
            continue
        if target is not None:
            for sec, name, full in list(leaves(spec)):
                if full.startswith(target + "."):
                    del sec[name]
        rest.append((dotted, value, text))
    if isinstance(overrides, dict) or any(text is None for _, _, text in rest):
        return {**raw, "sweep": spec}, {dotted: value for dotted, value, _ in rest}
    return {**raw, "sweep": spec}, [text for _, _, text in rest]


def _key_text(name: str) -> str:
    """A sweep entry's name with the spaces of a linked group normalised ("a,b" = "a, b")."""
    return ", ".join(k.strip() for k in str(name).split(","))


def plan_sweep(config: Union[str, Path, dict, Config], overrides=None, *,
               out: str | Path | None = None, check_machine: bool = True) -> SweepPlan:
    """Validate every cell (ConfigError naming the key and cell), check the output paths, and
    find the cells already done (their files are opened and checked: a damaged one is listed in
    ``plan.damaged`` and runs again). Starts nothing and writes nothing.

    Every cell gets the checks its task makes before computing (:func:`.cluster.check_cell`);
    with ``check_machine`` every cell still to run also those that depend on the machine
    (device, CUDA graphs, C++ compiler, Brian2), which hold for a local cluster only: a sweep
    on a cluster given by address or client runs them on one of its workers instead."""
    raw = _raw_config(config, overrides)
    axes = parse_axes(raw.get("sweep"))
    out, what = default_output(out, raw.get("output"), raw.get("name"), "sweep")
    config_file = config if isinstance(config, (str, Path)) else None
    out = check_sweep_paths(out, create=False, what=what,     # before the cells are expanded
                            inputs=run_inputs(config_file=config_file))
    cells = expand(raw, axes)
    plan = SweepPlan(raw, axes, cells, out, cells_dir_of(out),
                     inputs=run_inputs(*(c.config for c in cells), config_file=config_file))
    check_sweep_paths(out, create=False, what=what, plan=plan)   # the cells' files and inputs
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
    for cell in plan.todo if check_machine else ():
        try:
            check_cell(cell.config, machine=True)
        except InputError as exc:
            raise ConfigError(f"sweep cell ({_refused_label(cell)}): {exc}") from None
    return plan


def _refused_label(cell: Cell) -> str:
    """A cell as refusals name it (values as written, like expand's: 'euler', 0.5)."""
    return ", ".join(f"{k}={v!r}" for k, v in cell.overrides.items())


def cells_dir_of(out: Path) -> Path:
    """``NAME.cells`` beside the combined file ``NAME.nc`` (:func:`ctpc.config.paths.companion_path`)."""
    return companion_path(out, "cells")


def check_sweep_paths(out: str | Path, *, create: bool, what: str = "--out",
                      plan: SweepPlan | None = None, inputs=()) -> Path:
    """The combined file (its name must end in .nc) and the cells directory ``NAME.cells/`` must
    be writable, and with ``plan`` neither they nor any cell's file may be an input of a cell
    or an existing non-regular file: :func:`ctpc.config.paths.check_outputs`, before anything runs
    (OutputError, exit 2). ``create``: also create the parent directory and remove stale
    temporaries of a killed write of the combined file (``OUT.tmp-PID``); the cells directory
    itself is created only when a cell is about to run."""
    return check_outputs(out, what, companions=SWEEP_COMPANIONS, create=create,
                         inputs=plan.inputs if plan else inputs,
                         also=plan.cell_files() if plan else ())


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
    plan = plan_sweep(config, overrides, out=out,
                      check_machine=scheduler is None and client is None)
    check_sweep_paths(plan.out, create=True, plan=plan)
    remove_stale_temporaries_in(plan.cells_dir, keep=[p for _, p in plan.inputs])
    if plan.damaged:
        names = ", ".join(f"{k}.nc ({why})" for k, why in list(plan.damaged.items())[:3])
        more = f" and {len(plan.damaged) - 3} more" if len(plan.damaged) > 3 else ""
        warnings.warn(f"{len(plan.damaged)} damaged cell file(s) in {plan.cells_dir} will be "
                      f"computed again: {names}{more}", stacklevel=2)
    ran = [c.key for c in plan.todo]
    errors = _run_cells(plan, scheduler=scheduler, client=client, n_workers=n_workers,
                        progress=progress, command=command, group=group)
    combined = combine(plan.axes, plan.cells, plan.summaries, errors, base_config=plan.raw,
                       cells_dir=str(plan.cells_dir), command=command)
    write_netcdf(combined, plan.out)
    # What this run did (not in the file, which describes the whole sweep): cells reused from
    # OUT.cells/ and cells run, by outcome.
    outcomes = [plan.summaries[k].attrs["status"] if k in plan.summaries else "error"
                for k in ran]
    combined.attrs.update(path=str(plan.out), n_reused=len(plan.cells) - len(ran),
                          n_ran=len(ran), n_ran_ok=outcomes.count("ok"),
                          n_ran_diverged=outcomes.count("diverged"),
                          n_ran_error=outcomes.count("error"))
    return combined


def _remove_orphaned_temporaries(cells_dir: Path) -> None:
    """A sweep killed while writing a cell leaves ``<hash>.nc.tmp-PID`` or
    ``<hash>.weights.npz.tmp-PID`` (never a truncated file: writes are atomic). Remove those
    whose writer process is gone."""
    remove_stale_temporaries_in(cells_dir)


def _write_cell(plan: SweepPlan, cell: Cell, ds: xr.Dataset, weights: dict | None) -> None:
    ds.attrs["sweep_cell"] = json.dumps(cell.overrides)
    ds.attrs["sweep_key"] = cell.key
    if weights is not None:            # a training cell's final weights, beside its file
        write_weights(weights, plan.cell_weights_path(cell))
    else:                              # none for this cell: none of another run stays beside it
        plan.cell_weights_path(cell).unlink(missing_ok=True)
    write_netcdf(ds, plan.cell_path(cell))    # last: a cell is done once its file exists
    plan.summaries[cell.key] = summarize_cell(ds)
    plan.done.add(cell.key)


@contextlib.contextmanager
def _checked_on_cluster(dc, todo: list[Cell], scheduler, client):
    """Before any cell runs on a cluster given by address or client (whose machines planning
    could not check): :func:`.cluster.check_cells` on one of its workers; a refused cell is a
    ConfigError naming it. (A context manager to run between the client and the progress bar.)
    """
    if scheduler is not None or client is not None:
        where = f"--scheduler {scheduler}" if client is None else "the given client"
        try:
            refused = dc.submit(check_cells, [c.config.to_dict() for c in todo],
                                pure=False).result()
        except Exception as exc:  # noqa: BLE001 - the workers cannot even run the check
            raise ConfigError(f"{where}: the cluster's workers cannot run ctpc's checks of the "
                              f"cells ({type(exc).__name__}: {str(exc)[:160]}); install ctpc "
                              "and its dependencies where the workers run") from None
        if refused is not None:
            i, message = refused
            raise ConfigError(f"sweep cell ({_refused_label(todo[i])}): {message} (checked on a "
                              f"worker of {where}, before any cell ran)")
    yield


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
                _checked_on_cluster(dc, todo, scheduler, client), \
                tqdm(total=len(plan.cells), initial=len(plan.cells) - len(todo), unit="cell",
                     desc=f"sweep {plan.out.name}", disable=not progress) as bar:
            # Created once the cluster is up: a start that fails leaves no empty directory.
            plan.cells_dir.mkdir(parents=True, exist_ok=True)
            _remove_orphaned_temporaries(plan.cells_dir)
            futures = {}

            def submit(group):
                cmds = [f"{command or 'ctpc.sweep'} [cell {c.label}]" for c in group]
                # the resolved configs, pickled as they are: the worker resolves nothing
                fut = dc.submit(run_group, [c.config for c in group], cmds, pure=False)
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
