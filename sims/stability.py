"""Stability studies (issue 4 section 4): where each scheme stops being stable, predicted vs
observed, and the continuous flow against the paper's discrete algorithm.

    python sims/stability.py [--small] [--out runs/stability] [--scheduler ADDRESS]

Writes to OUT:
  predictions.nc       predicted dt_max per (method, scheme), exact and spec 5.2 closed form
  stability_map.nc     sweep over (method, scheme, dt): status of every run (Dask sweep)
  stability_map.png    the map with the predicted boundary drawn over it
  flow_vs_discrete.nc  PC-ALM at shrinking dt (semi_implicit) and the discrete algorithm
  flow_vs_discrete.png trajectories of the BP cosine and its final value against dt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
import yaml  # noqa: E402

import ctpc  # noqa: E402
from ctpc.studies import stability as st  # noqa: E402
from ctpc.results.dataset import write_netcdf  # noqa: E402
from ctpc.common.labels import var_attrs  # noqa: E402
from ctpc.analysis.plotting import flow_vs_discrete_figure, stability_map_figure  # noqa: E402

METHODS = ("pc", "pcalm")


def map_model(small: bool) -> dict:
    """A linear network (the linearisation is exact) on the embedded digits."""
    n, depth = (6, 5) if small else (8, 8)
    return {"name": "stability_map", "dtype": "float64", "device": "cpu",
            "network": {"width": n, "depth": depth, "activation": "linear"},
            "data": {"source": "digits", "batch_size": 4},
            "dynamics": {"tau_h": 4.0, "tau_lambda": 1.0},
            "integrator": {"scheme": "semi_implicit", "dt": 1.0,
                           "steps": 600 if small else 3000},
            "record": {"every": 10**9, "variables": []}}


def predictions(model: dict) -> xr.Dataset:
    exact = np.full((len(METHODS), len(st.SCHEMES)), np.nan)
    closed = exact.copy()
    for i, method in enumerate(METHODS):
        cfg = ctpc.load_config(model, {"dynamics.method": method})
        table = st.stability_table(cfg)
        exact[i] = table.loc[list(st.SCHEMES), "dt_max_ms"]
        closed[i] = table.loc[list(st.SCHEMES), "closed_form_ms"]
    coords = {"method": ("method", list(METHODS), var_attrs("method")),
              "scheme": ("scheme", list(st.SCHEMES), var_attrs("scheme"))}
    return xr.Dataset(
        {"dt_max": (("method", "scheme"), exact,
                    var_attrs("predicted dt_max", "ms",
                              "predicted largest stable dt (exact one-step map)")),
         "dt_max_closed_form": (("method", "scheme"), closed,
                                var_attrs("dt_max, closed form", "ms",
                                          "spec 5.2 closed form (loss Hessian ignored)"))},
        coords=coords, attrs={"config": ctpc.load_config(model).to_yaml()})


def stability_map(model: dict, dts, out: Path, scheduler: str | None) -> xr.Dataset:
    from ctpc.sweep import run_sweep
    sweep = {"dynamics.method": list(METHODS), "integrator.scheme": list(st.SCHEMES),
             "integrator.dt": [float(d) for d in dts]}
    return run_sweep({**model, "sweep": sweep}, out=out, scheduler=scheduler)


def flow_vs_discrete(small: bool) -> xr.Dataset:
    """PC-ALM, tanh, budget t = 2L ms: semi_implicit at shrinking dt and the paper's algorithm
    (eta_h = dt/tau_h = 0.25, alpha = 1 at dt = 1). Records on a common 1 ms grid."""
    depth = 8 if small else 16
    base = {"dtype": "float64", "device": "cpu",
            "network": {"width": 16, "depth": depth, "activation": "tanh"},
            "data": {"source": "digits", "batch_size": 16},
            "dynamics": {"tau_h": 4.0, "tau_lambda": 1.0},
            "record": {"variables": []}}
    t_end = 2.0 * depth
    dts = [1.0, 0.5, 0.25, 0.1] + ([] if small else [0.05, 0.02])
    runs = [ctpc.simulate(base, {"integrator.scheme": "semi_implicit", "integrator.dt": dt,
                                 "integrator.t_end": t_end, "record.every": round(1 / dt)})
            for dt in dts]
    runs.append(ctpc.simulate(base, {"integrator.scheme": "discrete", "integrator.dt": 1.0,
                                     "integrator.budget": int(t_end)}))
    keep = ["bp_cos", "bp_relerr", "credit_norm", "res_norm", "lam_norm", "energy",
            "bp_adjoint_norm"]
    # `step` differs between runs (different dt): only the common time axis is kept.
    ds = xr.concat([r[keep].drop_vars("step") for r in runs], dim="run", coords="minimal",
                   compat="override")
    ds = ds.assign_coords(run=("run", np.arange(len(runs)), var_attrs("run")),
                          scheme=("run", ["semi_implicit"] * len(dts) + ["discrete"],
                                  var_attrs("scheme")),
                          dt=("run", dts + [1.0], var_attrs("dt", "ms", "integration step")))
    ds.attrs = {"description": "continuous flow (semi_implicit, shrinking dt) vs the paper's "
                               "discrete algorithm (dt = 1), same time constants and budget",
                "config": runs[0].attrs["config"]}
    return ds


def map_status(smap: xr.Dataset) -> xr.DataArray:
    """The sweep's status with short dimension names: (method, scheme, dt)."""
    return smap.status.rename({"dynamics.method": "method", "integrator.scheme": "scheme",
                               "integrator.dt": "dt"})


def make_figures(preds: xr.Dataset, smap: xr.Dataset, flow: xr.Dataset) -> dict:
    cfg = ctpc.load_config(yaml.safe_load(preds.attrs["config"]))
    title = f"linear network, N = {cfg.network.width}, L = {cfg.network.depth}"
    return {"stability_map": stability_map_figure(map_status(smap), preds.dt_max, title=title),
            "flow_vs_discrete": flow_vs_discrete_figure(flow)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="small grid for CI and notebooks")
    p.add_argument("--out", default="runs/stability", help="output directory")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = map_model(args.small)

    preds = predictions(model)
    write_netcdf(preds, out / "predictions.nc")
    print(preds.dt_max.to_pandas().round(4).to_string())

    lo, hi = 0.6 * np.nanmin(preds.dt_max.values), 1.4 * np.nanmax(preds.dt_max.values)
    dts = np.geomspace(lo, hi, 10 if args.small else 28)
    smap = stability_map(model, dts, out / "stability_map.nc", args.scheduler)
    flow = flow_vs_discrete(args.small)
    write_netcdf(flow, out / "flow_vs_discrete.nc")
    for name, fig in make_figures(preds, smap, flow).items():
        fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    final = flow.bp_cos.isel(time=-1).mean("weight")
    for r in flow.run.values:
        print(f"{str(flow.scheme[r].values):>14} dt = {float(flow.dt[r]):<5g} mean final BP cosine "
              f"{float(final[r]):.6f}")
    print(f"wrote {out}/")


if __name__ == "__main__":
    main()
