"""The claim test: does PC-ALM match BP at depth 128, and under which inference budget?

    python sims/claim.py --dataset mnist            # the study (docs/reproduction.md, "Depth 128")
    python sims/claim.py --small                    # a tiny instance on digits (seconds)
    python sims/claim.py --dataset mnist --report-only     # tables from what has finished

The paper's claim (spec section 6) is that PC-ALM matches BP's accuracy in every width x depth
cell up to depth 128 under its protocol (spec section 7: discrete algorithm, T = 2L, eta_h by the
paper's step rule, alpha = 1, Adam at lr = 1e-3 sqrt(N/L), batches of 64, one epoch). This
script trains, at L = 128 and each width, BP; PC at T = 2L; PC-ALM at T = 2L, 3L and 4L; and
PC-ALM at T = 2L with the exact lambda_max (``dynamics.step_rule: exact``), each over the seeds,
as one resumable sweep per variant (a killed run continues where it stopped; a finished one only
redraws the tables). Then, per cell and budget, it compares PC-ALM with BP seed by seed and
gives a verdict (see ``verdict``), and prints one line per cell and the claim's overall status.

Writes to OUT (default runs/claim_<dataset>/): <variant>.nc (the sweeps), verdicts.csv /
verdicts.md (the verdict table), diagnostics.csv (per-layer BP alignment and credit arrival at
the start and end of training), the figures gap_vs_budget.png and arrival.png, and README.txt.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WIDTH, SEED = "network.width", "seed"


@dataclass(frozen=True)
class Variant:
    """One method x budget x step rule, trained at every width and seed."""
    name: str
    method: str
    budget_factor: float | None      # T = factor x L (None: BP, no inference)
    step_rule: str = "paper"

    def overrides(self, depth: int) -> dict:
        o = {"dynamics": {"method": self.method, "step_rule": self.step_rule}}
        if self.budget_factor is not None:
            o["integrator"] = {"budget": int(round(self.budget_factor * depth))}
        return o

    @property
    def label(self) -> str:
        if self.method == "bp":
            return "BP"
        rule = "" if self.step_rule == "paper" else f", {self.step_rule} eta_h"
        return f"{'PC-ALM' if self.method == 'pcalm' else 'PC'} T = {self.budget_factor:g}L{rule}"


# In the order they run: the paper's protocol first, then the longer budgets.
VARIANTS = (
    Variant("pcalm_2L", "pcalm", 2.0),
    Variant("bp", "bp", None),
    Variant("pc_2L", "pc", 2.0),
    Variant("pcalm_3L", "pcalm", 3.0),
    Variant("pcalm_4L", "pcalm", 4.0),
    Variant("pcalm_2L_exact", "pcalm", 2.0, "exact"),
)

# The study (mnist) and its CI-sized twin (--small): the same code path.
STUDIES = {
    "mnist": {"source": "mnist", "depth": 128, "widths": [16, 32], "seeds": [0, 1, 2],
              "activation": "relu", "data": {}, "training": {"epochs": 1, "eval_every": 47}},
    "digits": {"source": "digits", "depth": 128, "widths": [16, 32], "seeds": [0, 1, 2],
               "activation": "relu", "data": {}, "training": {"epochs": 40, "eval_every": 44}},
    "small": {"source": "digits", "depth": 4, "widths": [8], "seeds": [0, 1],
              "activation": "relu", "data": {"train_subset": 256, "test_subset": 128},
              "training": {"epochs": 3, "eval_every": 4, "lr": 0.02}},
}


def base_config(study: str) -> dict:
    """The paper's protocol (models/sweeps/grid_mnist.yaml) at the study's depth, data and
    training length."""
    from ctpc.loading import read_yaml
    s = STUDIES[study]
    raw = read_yaml(ROOT / "models" / "sweeps" / "grid_mnist.yaml")
    raw["name"] = f"claim_{study}"
    raw["description"] = "claim test: BP, PC and PC-ALM at one depth, several budgets"
    raw["network"] = {**raw["network"], "depth": s["depth"], "activation": s["activation"]}
    raw["data"] = {**raw["data"], "source": s["source"], **s["data"]}
    raw["training"] = {**raw["training"], **s["training"]}
    raw["sweep"] = {WIDTH: list(s["widths"]), SEED: list(s["seeds"])}
    return raw


def variant_configs(study: str, variants=VARIANTS) -> dict[str, dict]:
    """variant name -> sweep config (widths x seeds)."""
    base = base_config(study)
    out = {}
    for v in variants:
        cfg = copy.deepcopy(base)
        for section, values in v.overrides(base["network"]["depth"]).items():
            cfg[section] = {**cfg.get(section, {}), **values}
        cfg["name"] = f"{base['name']}_{v.name}"
        out[v.name] = cfg
    return out


def run(out: Path, study: str, *, variants=VARIANTS, scheduler=None, n_workers=None,
        progress=True) -> dict:
    """Run (or resume) every variant's sweep into OUT/<variant>.nc; returns name -> dataset."""
    from ctpc.sweep import run_sweep
    command = " ".join(["python", *sys.argv])
    done = {}
    for name, cfg in variant_configs(study, variants).items():
        t0 = time.time()
        done[name] = run_sweep(cfg, out=out / f"{name}.nc", scheduler=scheduler,
                               n_workers=n_workers, progress=progress, command=command)
        print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--small", action="store_true", help="tiny digits instance (seconds)")
    p.add_argument("--out", type=Path)
    p.add_argument("--scheduler")
    p.add_argument("--workers", type=int)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    study = "small" if a.small else a.dataset
    out = a.out or ROOT / "runs" / f"claim_{study}"
    out.mkdir(parents=True, exist_ok=True)
    run(out, study, scheduler=a.scheduler, n_workers=a.workers, progress=not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
