"""PC vs PC-ALM: how credit travels through depth (spec 5.3), as data and figures.

A linear residual network with the spec's step sizes (eta_h = 0.24, alpha = 1, semi-implicit,
dt = 1 ms: tau_h = 1/0.24 ms, tau_lambda = 1 ms) is run for each depth L, as three sweeps on
Dask over depth, each with a budget linked to L (a sweep's linked keys):

* ``pcalm``: PC-ALM, 4L steps, every step recorded. The wave needs ~2L steps (speed
  sqrt(alpha eta_h) ~ 0.49 layers per step), so 4L shows the arrival and the first reflection.
* ``pc``: PC, 8 L^2 steps (diffusion needs ~L^2), recorded every max(1, L^2/128) steps: long
  enough that layer 1's credit has settled (``reference_drift`` < 1 %), so "half its final
  value" measures the diffusion, not the budget.
* ``pc_4L``: PC with PC-ALM's budget (4L, every step), for the same-window comparison.

Writes to OUT (default runs/propagation/): pcalm.nc, pc.nc, pc_4L.nc (+ .cells/ per-run
files), arrival.csv, exponents.csv, first_to_last.csv and the figures arrival_vs_depth.png,
credit_heatmaps.png, credit_distribution.png. Rerunning reuses finished cells.

    python sims/propagation.py            # depths 8..128, N = B = 16 (~3 min on 2 cores)
    python sims/propagation.py --small    # depths 8, 16, 32, N = B = 8 (seconds; CI, notebooks)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ctpc import analysis
from ctpc.sweep import plan_sweep, run_sweep, select_cell
from ctpc.sweep.cluster import dask_client, local_worker_count

FULL = {"depths": [8, 16, 32, 64, 128], "width": 16, "batch": 16}   # as tests/test_propagation.py
SMALL = {"depths": [8, 16, 32], "width": 8, "batch": 8}
ETA_H, ALPHA = 0.24, 1.0
# study name -> (method, budget in steps and record interval for depth L)
STUDIES = {
    "pcalm": ("pcalm", lambda L: (4 * L, 1)),
    "pc": ("pc", lambda L: (8 * L * L, max(1, L * L // 128))),
    "pc_4L": ("pc", lambda L: (4 * L, 1)),
}
LABELS = {"pcalm": "PC-ALM", "pc": "PC"}


def sweep_config(study: str, depths: list[int], width: int, batch: int) -> dict:
    method, budget = STUDIES[study]
    dynamics = {"method": method, "rho": 1.0, "state_lr": ETA_H}
    if method == "pcalm":
        dynamics["alpha"] = ALPHA
    return {
        "name": f"propagation_{study}",
        "description": f"{LABELS[method]} linear chain, eta_h = {ETA_H}, alpha = {ALPHA}",
        "seed": 0, "dtype": "float64", "device": "cpu",
        "network": {"width": width, "depth": depths[0], "activation": "linear"},
        "data": {"source": "digits", "batch_size": batch},
        "dynamics": dynamics,
        "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 1},
        "record": {"every": 1, "variables": []},   # per-layer series only: no 4-D traces
        "sweep": {"network.depth, integrator.steps, record.every":
                  [[L, *budget(L)] for L in depths]},
    }


def run(out: Path, size: dict, *, scheduler=None, n_workers=None, progress=True) -> dict:
    """Run (or resume) the three sweeps on one Dask client; returns study -> dataset."""
    configs = {k: sweep_config(k, size["depths"], size["width"], size["batch"]) for k in STUDIES}
    todo = sum(len(plan_sweep(c, out=out / f"{m}.nc").todo) for m, c in configs.items())
    with dask_client(scheduler=scheduler, client=None,
                     n_workers=local_worker_count(max(todo, 1), n_workers)) as client:
        return {m: run_sweep(c, out=out / f"{m}.nc", client=client, progress=progress,
                             command=" ".join(["python", *sys.argv]))
                for m, c in configs.items()}


def summarize(sweeps: dict) -> tuple[dict[str, pd.DataFrame], dict]:
    """Tables: arrival times at the input layer (half value, both references), fitted
    exponents, and the first- to last-layer credit ratio after 4L steps (spec 5.3)."""
    rows, fits, scaling = [], [], {}
    for m in ("pcalm", "pc"):
        ds = sweeps[m]
        for ref in ("bp_adjoint", "final"):
            res = analysis.arrival_scaling(ds, 0.5, ref)
            scaling[(m, ref)] = res
            df = res[["arrival_time", "arrival_step", "arrived", "budget"]].to_dataframe()
            rows.append(df.reset_index().assign(method=m, reference=ref))
            fits.append({"method": m, "reference": ref, "exponent": float(res.exponent),
                         "prefactor_ms": float(res.prefactor), "r2": float(res.r2),
                         "speed_from_depths_layers_per_ms": float(res.speed_from_depths),
                         "all_arrived": bool(res.all_arrived)})
    arrival = pd.concat(rows, ignore_index=True)[
        ["method", "reference", "network.depth", "arrival_time", "arrival_step", "arrived",
         "budget"]]
    ratios = []
    for study in ("pcalm", "pc_4L"):
        d = analysis.credit_distribution(sweeps[study])     # at the end of the 4L budget
        ratios.append(d[["first_to_last", "bp_first_to_last", "evenness", "bp_evenness",
                         "total_variation", "evaluated_at"]].to_dataframe().reset_index()
                      .assign(method=STUDIES[study][0]))
    first_to_last = pd.concat(ratios, ignore_index=True)
    tables = {"arrival": arrival, "exponents": pd.DataFrame(fits),
              "first_to_last": first_to_last}
    return tables, scaling


def make_figures(sweeps: dict, scaling: dict) -> dict:
    """name -> matplotlib Figure; the notebook shows these, the script saves them as PNG."""
    import matplotlib.pyplot as plt

    from ctpc.analysis import plotting

    figs = {}
    fig, ax = plt.subplots(figsize=(6.4, 6), layout="constrained")
    plotting.plot_arrival_scaling({
        "PC-ALM (½ BP adjoint)": scaling[("pcalm", "bp_adjoint")],
        "PC-ALM (½ final)": scaling[("pcalm", "final")],
        "PC (½ final)": scaling[("pc", "final")],
        "PC (½ BP adjoint)": scaling[("pc", "bp_adjoint")]}, ax)
    ax.set_title("credit arrival at the input layer")
    figs["arrival_vs_depth"] = fig

    L = int(sweeps["pcalm"]["network.depth"].max())
    cell = {k: select_cell(sweeps[k], {"network.depth": L}) for k in STUDIES}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    plotting.plot_credit_heatmap(cell["pcalm"], axes[0], title=f"PC-ALM, L = {L}, 4L steps")
    plotting.plot_credit_heatmap(cell["pc_4L"], axes[1], title=f"PC, L = {L}, same 4L steps")
    plotting.plot_credit_heatmap(cell["pc"], axes[2], log_time=True,
                              title=f"PC, L = {L}, 8 L² steps (log time)")
    figs["credit_heatmaps"] = fig

    fig, ax = plt.subplots(figsize=(6.4, 5.4), layout="constrained")
    plotting.plot_credit_distribution({
        f"PC-ALM L = {L}": analysis.credit_distribution(cell["pcalm"]),
        f"PC L = {L}": analysis.credit_distribution(cell["pc_4L"]),
        f"PC L = {L}, long run": analysis.credit_distribution(cell["pc"])}, ax)
    ax.set_title("credit per layer relative to BP")
    figs["credit_distribution"] = fig
    return figs


def open_sweeps(out: Path) -> dict:
    """The saved sweeps of a previous run of this script (study -> dataset)."""
    from ctpc import open_results
    return {k: open_results(out / f"{k}.nc") for k in STUDIES}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="depths 8, 16, 32 and N = B = 8")
    p.add_argument("--out", type=Path, default=Path("runs/propagation"), help="output directory")
    p.add_argument("--workers", type=int, help="local Dask cluster size")
    p.add_argument("--scheduler", help="address of a running Dask scheduler")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")          # files only, no display needed
    import matplotlib.pyplot as plt
    args.out.mkdir(parents=True, exist_ok=True)
    sweeps = run(args.out, SMALL if args.small else FULL, scheduler=args.scheduler,
                 n_workers=args.workers, progress=not args.quiet)
    tables, scaling = summarize(sweeps)
    written = [args.out / f"{k}.nc" for k in STUDIES]
    for name, table in tables.items():
        table.to_csv(args.out / f"{name}.csv", index=False)
        written.append(args.out / f"{name}.csv")
    for name, fig in make_figures(sweeps, scaling).items():
        fig.savefig(args.out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(args.out / f"{name}.png")
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        for name, table in tables.items():
            print(f"--- {name}\n{table.to_string(index=False)}")
    print("wrote", ", ".join(str(x) for x in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
