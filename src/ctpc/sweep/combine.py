"""Per-cell datasets -> ONE sweep dataset whose sweep keys are dimensions.

Simulation sweeps keep every per-layer/per-weight/scalar series ([time, layer], [time, weight],
[time]), ``bp_adjoint_norm`` [layer], the per-cell run parameters (dt, tau_h, tau_lambda, eta_h,
alpha...) and outcome (``status``, ``error``, ``diverged_at``, ``wall_time_s``) as variables over
the sweep dims. The 4-D traces and the final weight gradients stay in the per-cell files
(``cell_file`` names each one), so the combined file stays small for any depth.

Training sweeps (cells are ``ctpc.train`` runs) keep the whole training dataset of each cell:
the per-update series [update], [update, layer], the evaluations [eval], [eval, weight] (with
``eval_update`` and ``eval_epoch`` as variables), and per-cell scalars (lr, eta_h, n_updates,
``final_test_acc``, ``diverged_at_update``, wall time...).

Cells of different shape are padded with NaN along every such axis: ``layer``/``weight``
(different depths), ``time`` (different budgets or dt: the union of all recorded times; a diverged
cell ends early), ``update`` and ``eval`` (different numbers of updates or evaluations).
``<axis>_mask`` says which entries are real.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import xarray as xr
import yaml

from ctpc.common.version import __version__
from ctpc.results.dataset import VAR_ATTRS
from ctpc.common.labels import sweep_key_attrs, var_attrs
from ctpc.training.history import ATTRS as TRAINING_ATTRS
from ctpc.results.run_result import SERIES_LAYER, SERIES_SCALAR, SERIES_WEIGHT
from ctpc.sweep.cells import Axis, Cell

KEPT_VARIABLES = SERIES_LAYER + SERIES_WEIGHT + SERIES_SCALAR + ("bp_adjoint_norm",)
TRAINING_VARIABLES = ("train_loss", "grad_norm", "weight_norm", "energy", "res_norm",
                      "lam_norm", "credit_norm", "train_acc", "test_acc", "train_mse",
                      "test_mse", "train_ce", "test_ce", "bp_cos_global", "bp_cos", "bp_relerr",
                      "eval_update", "eval_epoch", "eval_wall_time")
# Per-cell attributes kept as variables over the sweep dims (ctpc.common.labels: short long_name,
# units where there are any, description).
CELL_SCALARS = {
    "dt": var_attrs("dt", "ms", "integration step"),
    "tau_h": var_attrs("τ_h", "ms", "activity time constant"),
    "tau_lambda": var_attrs("τ_λ", "ms", "multiplier time constant (inf for PC)"),
    "tau_e": var_attrs("τ_e", "ms", "error-neuron time constant"),
    "eta_h": var_attrs("η_h = dt/τ_h", None, "dt / tau_h"),
    "alpha": var_attrs("α = dt/τ_λ", None, "dt / tau_lambda"),
    "rho": var_attrs("penalty ρ", None, "penalty"),
    "n_steps": var_attrs("steps asked for", None, "steps asked for"),
    "steps_completed": var_attrs("steps run", None, "steps run"),
    "diverged_at": var_attrs("divergence time", "ms",
                             "time of the first out-of-bounds step (NaN if not diverged)"),
    "wall_time_s": var_attrs("wall time", "s", "wall time of the run"),
}
TRAINING_SCALARS = {
    "lr": var_attrs("learning rate", None, "optimiser learning rate"),
    "eta_h": var_attrs("η_h = dt/τ_h", None, "dt / tau_h (state_lr)"),
    "alpha": var_attrs("α = dt/τ_λ", None, "dt / tau_lambda"),
    "rho": var_attrs("penalty ρ", None, "penalty"),
    "dt": var_attrs("dt", "ms", "integration step"),
    "n_steps": var_attrs("inference budget", None, "inference budget in steps (0 for bp)"),
    "n_updates": var_attrs("updates asked for", None, "updates asked for"),
    "updates_completed": var_attrs("updates run", None, "updates run"),
    "diverged_at_update": var_attrs("divergence update", None,
                                    "first non-finite update (NaN if not diverged)"),
    "final_train_acc": var_attrs("final train accuracy", None,
                                 "training accuracy at the last evaluation"),
    "final_test_acc": var_attrs("final test accuracy", None,
                                "test accuracy at the last evaluation"),
    "wall_time_s": var_attrs("wall time", "s",
                             "wall time of the run; a cell run in a replica group has the "
                             "group's, the same for every member"),
    "train_time_s": var_attrs("training time", "s",
                              "of the wall time, the updates (the group's, likewise)"),
    "samples_per_s": var_attrs("samples per second", "1/s",
                               "training throughput of this replica"),
}
TIME_DECIMALS = 9     # times are step*dt in ms; rounding makes equal times of different dt equal
# What a cell of each kind keeps, and along which axes cells are padded to a common length.
KINDS = {
    "run": (KEPT_VARIABLES, CELL_SCALARS, ("time", "layer", "weight")),
    "training": (TRAINING_VARIABLES, TRAINING_SCALARS, ("update", "eval", "layer", "weight")),
}


def cell_kind(ds: xr.Dataset) -> str:
    return "training" if ds.attrs.get("kind") == "training" else "run"


def summarize_cell(ds: xr.Dataset) -> xr.Dataset:
    """The part of one run that goes into the combined dataset (loaded in memory)."""
    kind = cell_kind(ds)
    variables, scalars, _ = KINDS[kind]
    if kind == "training":
        ds = ds.reset_coords(["eval_update", "eval_epoch"])
        last = ds.isel(eval=-1) if ds.sizes["eval"] else None
        extra = {"final_train_acc": np.nan if last is None else float(last.train_acc),
                 "final_test_acc": np.nan if last is None else float(last.test_acc)}
    else:
        extra = {}
    small = ds[[v for v in variables if v in ds.variables]]
    small = small.drop_vars([c for c in ("step", "sample", "unit") if c in small.coords])
    if "time" in small.coords:
        small = small.assign_coords(time=np.round(small["time"].values, TIME_DECIMALS))
    for name in scalars:
        small[name] = float(extra.get(name, ds.attrs.get(name, np.nan)))
    small.attrs = {"status": ds.attrs.get("status", "ok"), "kind": kind}
    return small.load()


def _grid(axes: list[Axis], fill, dtype) -> np.ndarray:
    return np.full(tuple(len(a) for a in axes), fill, dtype=dtype)


def combine(axes: list[Axis], cells: list[Cell], summaries: dict[str, xr.Dataset],
            errors: dict[str, str], *, base_config: dict, cells_dir: str,
            command: str | None = None) -> xr.Dataset:
    """Build the sweep dataset. ``summaries``: cell key -> :func:`summarize_cell` output for the
    cells that ran (ok or diverged); ``errors``: cell key -> message for cells that crashed."""
    dims = [a.dim for a in axes]
    shape = tuple(len(a) for a in axes)
    done = list(summaries.values())
    kind = done[0].attrs["kind"] if done else "run"
    kept, cell_scalars, padded = KINDS[kind]
    # every padded axis is the union of the cells' coordinate values
    union = {d: np.unique(np.concatenate([s[d].values for s in done if d in s.dims]
                                         or [np.zeros(0)]))
             for d in padded}
    times = union.get("time")

    present = [v for v in kept if any(v in s for s in done)]
    var_dims = {v: next(s[v].dims for s in done if v in s) for v in present}
    arrays = {v: np.full(shape + tuple(len(union[d]) for d in var_dims[v]), np.nan)
              for v in present}
    masks = {d: np.zeros(shape + (len(union[d]),), dtype=bool) for d in union}
    scalars = {k: _grid(axes, np.nan, float) for k in cell_scalars}
    status = _grid(axes, "error", object)
    error = _grid(axes, "", object)
    cell_file = _grid(axes, "", object)

    for cell in cells:
        i = cell.index
        if cell.key in errors:
            error[i] = errors[cell.key]
            continue
        s = summaries.get(cell.key)
        if s is None:     # neither ran nor crashed: cannot happen after a complete run_sweep
            status[i], error[i] = "missing", "the cell did not run"
            continue
        status[i] = s.attrs["status"]
        cell_file[i] = f"{cell.key}.nc"
        for d in union:
            masks[d][i] = np.isin(union[d], s[d].values) if d in s.dims else False
        aligned = s.reindex({d: union[d] for d in union if d in s.dims})
        for v in present:
            if v in aligned:
                arrays[v][i] = aligned[v].transpose(*var_dims[v]).values
        for k in cell_scalars:
            scalars[k][i] = float(s[k])

    coords = {"layer": ("layer", union["layer"],
                        var_attrs("hidden layer l", None, "hidden layer l (1 .. L-1)")),
              "weight": ("weight", union["weight"],
                         var_attrs("weight matrix W_l", None, "W_l (1 .. L) feeds layer l"))}
    if kind == "training":
        coords["update"] = ("update", union["update"],
                            var_attrs("update", None, "optimiser update (1-based)"))
        coords["eval"] = ("eval", union["eval"], var_attrs("evaluation", None, "evaluation point"))
    else:
        coords["time"] = ("time", times, var_attrs("time", "ms", "simulated time"))
    for a in axes:
        for key in a.keys:
            coords[key] = (a.dim, np.asarray(a.coord(key)), sweep_key_attrs(key))
    dts = scalars["dt"][np.isfinite(scalars["dt"])]
    if kind == "run" and dts.size and np.all(dts == dts[0]):  # one dt: `step` as in a run
        coords["step"] = ("time", np.round(times / dts[0]).astype(np.int64),
                          var_attrs("step", None, "integration step"))

    data = {}
    for v in present:
        data[v] = (tuple(dims) + var_dims[v], arrays[v], _attrs(v, kind))
    for d, m in masks.items():
        data[f"{d}_mask"] = (tuple(dims) + (d,), m, var_attrs(
            f"{d} present", None, f"True where the cell has this {d} (else padding)"))
    for k, attrs in cell_scalars.items():
        data[k] = (tuple(dims), scalars[k], dict(attrs))
    data["status"] = (tuple(dims), status.astype(str), var_attrs(
        "cell status", None, "ok | diverged | error (crashed; rerun the sweep to retry)"))
    data["error"] = (tuple(dims), error.astype(str),
                     var_attrs("error message", None, "error message of a crash"))
    data["cell_file"] = (tuple(dims), cell_file.astype(str), var_attrs(
        "cell file", None, "per-cell netCDF (full traces) in the cells directory"))
    out = xr.Dataset(data, coords=coords)

    counts = {k: int((status == k).sum()) for k in ("ok", "diverged", "error")}
    cell_kind_attr = "training" if kind == "training" else "run"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out.attrs = {
        "Conventions": "CF-1.10",
        "title": f"ctpc sweep {base_config.get('name', '')}".strip(),
        "history": f"{now}: {command or 'ctpc.sweep.run_sweep() (Python API)'} "
                   f"(ctpc {__version__})",
        "source": f"ctpc {__version__}",
        "ctpc_version": __version__,
        "kind": "sweep",
        "cell_kind": cell_kind_attr,
        "sweep_dims": json.dumps(dims),
        "sweep": json.dumps({",".join(a.keys) if len(a.keys) > 1 else a.dim:
                             [list(v) if len(v) > 1 else v[0] for v in a.values] for a in axes}),
        "cells_dir": cells_dir,
        "n_cells": len(cells), "n_ok": counts["ok"], "n_diverged": counts["diverged"],
        "n_error": counts["error"],
        "config": yaml.safe_dump(base_config, sort_keys=False),
    }
    return out


def _attrs(name: str, kind: str = "run") -> dict:
    tables = (TRAINING_ATTRS, VAR_ATTRS) if kind == "training" else (VAR_ATTRS, TRAINING_ATTRS)
    return dict(next((t[name] for t in tables if name in t), {}))


def sweep_dims(ds: xr.Dataset) -> list[str]:
    if ds.attrs.get("kind") != "sweep":
        raise ValueError("not a ctpc sweep dataset (attribute kind != 'sweep'); open the file "
                         "written by python -m ctpc.sweep")
    return json.loads(ds.attrs["sweep_dims"])


def select_cell(ds: xr.Dataset, selection: dict | None = None, **by_dim) -> xr.Dataset:
    """One cell of a sweep as a run-like dataset: padding removed, per-cell parameters
    (dt, tau_h, status...) also as attributes, so single-run code and plots work on it.

        select_cell(sweep, {"network.depth": 32, "dynamics.method": "pc"})
    """
    selection = {**(selection or {}), **by_dim}
    dims = sweep_dims(ds)
    missing = [d for d in dims if d not in selection]
    if missing:
        raise ValueError(f"select_cell: give a value for every sweep dimension; missing "
                         f"{missing} (dims: {dims})")
    cell = ds.sel(selection)
    _, cell_scalars, padded = KINDS[ds.attrs.get("cell_kind", "run")]
    for d in padded:
        mask = cell[f"{d}_mask"].values.astype(bool)
        cell = cell.isel({d: np.flatnonzero(mask)})
    attrs = {k: float(cell[k]) for k in cell_scalars}
    attrs.update(status=str(cell["status"].values), kind="sweep cell",
                 depth=int(cell.sizes["weight"]),
                 sweep_cell=json.dumps({d: _plain(cell[d].values) for d in dims}))
    cell = cell.drop_vars(list(cell_scalars) + ["status", "error"] +
                          [f"{d}_mask" for d in padded])
    cell.attrs = {**ds.attrs, **attrs}
    return cell


def _plain(v):
    return v.item() if hasattr(v, "item") else v
