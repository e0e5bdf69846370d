"""Does the continuous-time flow learn as well as the paper's discrete algorithm, and at which
dt does it stop? One cell of the training grid trained with the discrete algorithm and with the
flow (semi_implicit, euler) at several dt, same physical time per presentation, 3 seeds.

    python sims/flow_training.py [--dataset digits|mnist] [--width 16 --depth 16]
                                 [--activation relu] [--out runs/flow_training] [--small]

The discrete algorithm runs T = 2L steps with eta_h = 1/lambda_max and alpha = 1 (the paper's
protocol). The flow runs with the same time constants: tau_h = lambda_max ms (so that dt = 1 ms
is one paper step), tau_lambda = 1 ms, for t_end = 2L ms at each dt (2L/dt steps). At dt = 1 ms
semi_implicit is the discrete algorithm with post_dual credit (one step = one iteration).
Writes OUT/flow.nc (the sweep) and OUT/table.md (final test accuracy, mean +- sd over seeds, and
the final whole-network and first-layer BP cosine).
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

import ctpc
from ctpc.config.load import read_yaml
from ctpc.build.auto_step import activity_hessian_lambda_max
from ctpc.sweep import run_sweep, select_cell

ROOT = Path(__file__).resolve().parent.parent
ROWS = [("discrete", 1.0), ("semi_implicit", 1.0), ("semi_implicit", 0.5),
        ("semi_implicit", 0.25), ("euler", 0.5), ("euler", 0.25)]


def label(scheme: str, dt: float) -> str:
    return f"{scheme} dt={dt:g}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--activation", default="relu")
    p.add_argument("--out", default="runs/flow_training")
    p.add_argument("--small", action="store_true", help="a CI-sized run (few updates)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = read_yaml(ROOT / "models" / "sweeps" / f"grid_{a.dataset}.yaml")
    raw.pop("sweep")
    raw.update(name=f"flow_{a.dataset}", dtype="float32")
    raw["network"].update(width=a.width, depth=a.depth, activation=a.activation)
    if a.small:
        raw["data"].update(train_subset=256, test_subset=128)
        raw["training"].update(epochs=4, eval_every=4, lr=0.02)
    probe = copy.deepcopy(raw)
    probe["dynamics"] = {"method": "pcalm", "state_lr": 0.25, "alpha": 1.0}
    probe["integrator"] = {"scheme": "discrete", "dt": 1.0, "budget": 2 * a.depth}
    lam = activity_hessian_lambda_max(ctpc.load_config(probe))
    T = 2 * a.depth
    raw["dynamics"] = {"method": "pcalm", "rho": 1.0, "tau_h": lam, "tau_lambda": 1.0}
    raw["integrator"] = {"scheme": "discrete", "dt": 1.0, "steps": T}
    # one dimension, labelled by `description` (a free-text key) since scheme and dt repeat
    raw["sweep"] = {
        "description, integrator.scheme, integrator.dt, integrator.steps":
            [[label(s, dt), s, dt, int(round(T / dt))] for s, dt in ROWS],
        "seed": [0, 1, 2]}
    t0 = time.perf_counter()
    ds = run_sweep(raw, out=out / "flow.nc", progress=True)
    wall = time.perf_counter() - t0
    lines = [f"# Continuous flow against the discrete algorithm ({a.dataset}, N = {a.width}, "
             f"L = {a.depth}, {a.activation}, PC-ALM, tau_h = lambda_max = {lam:.3f} ms, "
             f"tau_lambda = 1 ms, {T} ms per presentation)", "",
             "| scheme | dt (ms) | steps | test accuracy (mean ± sd, 3 seeds) | BP cosine, "
             "whole network | BP cosine, W_1 | status |", "|---|---|---|---|---|---|---|"]
    for scheme, dt in ROWS:
        accs, glob, first, status = [], [], [], []
        for seed in (0, 1, 2):
            cell = select_cell(ds, {"description": label(scheme, dt), "seed": seed})
            status.append(cell.attrs["status"])
            accs.append(float(cell.test_acc[-1]))
            glob.append(float(cell.bp_cos_global[-1]))
            first.append(float(cell.bp_cos.isel(eval=-1).sel(weight=1)))
        lines.append(f"| {scheme} | {dt:g} | {int(round(T / dt))} | "
                     f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs, ddof=1):.2f} % | "
                     f"{np.mean(glob):.3f} | {np.mean(first):.3f} | "
                     f"{', '.join(sorted(set(status)))} |")
    lines += ["", f"Wall time: {wall:.0f} s."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
