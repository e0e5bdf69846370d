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
import json
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


# In the order they run: the paper's protocol and BP first, then what answers "does the gap
# close": the longest budget, the middle one; PC at the paper's budget; last the exact step
# size (the paper's rule is the default, so this one only measures what the 3 % changes).
VARIANTS = (
    Variant("pcalm_2L", "pcalm", 2.0),
    Variant("bp", "bp", None),
    Variant("pcalm_4L", "pcalm", 4.0),
    Variant("pcalm_3L", "pcalm", 3.0),
    Variant("pc_2L", "pc", 2.0),
    Variant("pcalm_2L_exact", "pcalm", 2.0, "exact"),
)
# The table's order: by method, then budget.
TABLE_ORDER = ("pcalm_2L", "pcalm_3L", "pcalm_4L", "pcalm_2L_exact", "pc_2L")

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
    from ctpc.config.load import read_yaml
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
    from ctpc.sweep.cluster import dask_client, local_worker_count
    command = " ".join(["python", *sys.argv])
    configs = variant_configs(study, variants)
    n_cells = len(STUDIES[study]["widths"]) * len(STUDIES[study]["seeds"])
    done = {}
    # one cluster for every variant's sweep (a local one starts in seconds, six times over)
    with dask_client(scheduler=scheduler, n_workers=local_worker_count(n_cells, n_workers)) as c:
        for name, cfg in configs.items():
            t0 = time.time()
            done[name] = run_sweep(cfg, out=out / f"{name}.nc", client=c, progress=progress,
                                   command=command)
            if progress:
                print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
    return done


# ------------------------------------------------------------------ the verdict
@dataclass(frozen=True)
class Rule:
    """The verdict rule, on the paired per-seed differences d = PC-ALM - BP (points) and their
    ``confidence`` interval (t distribution over seeds):
    matches  if the interval lies inside +-band, or it contains 0 and |mean| <= mean_tol;
    behind   if the interval lies entirely below -behind;
    else     undecided, more seeds needed."""
    band: float = 2.0
    mean_tol: float = 1.0
    behind: float = 1.0
    confidence: float = 0.95

    def text(self) -> str:
        c = f"{100 * self.confidence:g} %"
        return (f"verdict rule: d = PC-ALM - BP per seed (points), {c} t-interval over seeds; "
                f"'matches' if the interval lies inside +-{self.band:g} or contains 0 with "
                f"|mean| <= {self.mean_tol:g}; 'behind' if it lies below -{self.behind:g}; "
                "else 'undecided, more seeds needed'")


MATCHES, BEHIND, UNDECIDED = "matches", "behind", "undecided, more seeds needed"


def paired_interval(d, confidence: float = 0.95) -> tuple[float, float, int, float, float]:
    """mean, sd, n, low, high of the t-interval of the mean of ``d`` (NaNs dropped; n < 2:
    an infinite interval)."""
    import numpy as np
    from scipy import stats
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0:
        return float("nan"), float("nan"), 0, float("-inf"), float("inf")
    mean = float(d.mean())
    if n < 2:
        return mean, float("nan"), n, float("-inf"), float("inf")
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / n ** 0.5
    return mean, sd, n, mean - half, mean + half


def verdict(d, rule: Rule = Rule()) -> dict:
    """The verdict on one cell's paired differences ``d`` (see :class:`Rule`)."""
    mean, sd, n, lo, hi = paired_interval(d, rule.confidence)
    if n >= 2 and (-rule.band <= lo and hi <= rule.band or lo <= 0 <= hi and
                   abs(mean) <= rule.mean_tol):
        v = MATCHES
    elif n >= 2 and hi < -rule.behind:
        v = BEHIND
    else:
        v = UNDECIDED
    return {"mean": mean, "sd": sd, "n": n, "ci_low": lo, "ci_high": hi, "verdict": v}


def overall(verdicts) -> str:
    """The claim at this depth from its cells' verdicts: refuted if any cell is behind, holds if
    every cell matches, else undecided."""
    verdicts = list(verdicts)
    if any(v == BEHIND for v in verdicts):
        return "REFUTED (PC-ALM behind BP in at least one cell)"
    if verdicts and all(v == MATCHES for v in verdicts):
        return "HOLDS (PC-ALM matches BP in every cell)"
    return "UNDECIDED (more seeds needed)"


# ------------------------------------------------------------------ reading the sweeps
def final_accuracy(out: Path, variants=VARIANTS):
    """One row per variant x width x seed: final test accuracy (%), status, eta_h, budget."""
    import numpy as np
    import pandas as pd

    from ctpc import open_results
    rows = []
    for v in variants:
        path = out / f"{v.name}.nc"
        if not path.exists():
            continue
        with open_results(path) as ds:
            ds = ds.load()
        for w in ds[WIDTH].values.tolist():
            for s in ds[SEED].values.tolist():
                cell = ds.sel({WIDTH: w, SEED: s})
                ok = str(cell["status"].values) == "ok"
                rows.append({"variant": v.name, "label": v.label, "method": v.method,
                             "budget_factor": v.budget_factor, "step_rule": v.step_rule,
                             "width": int(w), "seed": int(s), "status": str(cell["status"].values),
                             "test_acc": 100 * float(cell["final_test_acc"]) if ok else np.nan,
                             "eta_h": float(cell["eta_h"]) if "eta_h" in cell else np.nan})
    return pd.DataFrame(rows)


def verdict_table(acc, rule: Rule = Rule()):
    """Per width and PC / PC-ALM variant: each method's mean +- sd, the paired difference to BP,
    its interval and the verdict (PC rows are context: the claim is about PC-ALM)."""
    import pandas as pd
    rows = []
    for w, g in acc.groupby("width"):
        bp = g[g.variant == "bp"].set_index("seed")["test_acc"]
        for name, gv in g[g.variant != "bp"].groupby("variant", sort=False):
            x = gv.set_index("seed")["test_acc"]
            seeds = sorted(set(bp.dropna().index) & set(x.dropna().index))
            d = [x[s] - bp[s] for s in seeds]
            v = verdict(d, rule)
            first = gv.iloc[0]
            rows.append({"width": w, "variant": name, "label": first.label,
                         "method": first.method, "budget_factor": first.budget_factor,
                         "step_rule": first.step_rule, "eta_h": float(gv["eta_h"].mean()),
                         "bp_mean": bp.mean(), "bp_sd": bp.std(ddof=1),
                         "mean_acc": x.mean(), "sd_acc": x.std(ddof=1), **v})
    order = {name: i for i, name in enumerate(TABLE_ORDER)}
    t = pd.DataFrame(rows)
    if len(t):
        t = t.sort_values(["width", "variant"], key=lambda c: c.map(order) if c.name ==
                          "variant" else c).reset_index(drop=True)
    return t


def status_lines(table, depth: int) -> list[str]:
    """One line per cell (width x variant) and the claim's overall status at this depth."""
    lines = []
    for _, r in table.iterrows():
        lines.append(f"N = {r.width:3d}, L = {depth}, {r.label:26s} BP {r.bp_mean:5.1f}, "
                     f"this {r.mean_acc:5.1f}; d = {r['mean']:+5.1f} ± {r.sd:.1f} "
                     f"[{r.ci_low:+.1f}, {r.ci_high:+.1f}] (n = {r.n}): {r.verdict}")
    pcalm = table[table.method == "pcalm"]
    paper = pcalm[(pcalm.budget_factor == 2.0) & (pcalm.step_rule == "paper")]
    lines.append(f"CLAIM at L = {depth}, the paper's protocol (T = 2L, paper eta_h): "
                 + overall(paper.verdict))
    if len(pcalm):
        best = pcalm.loc[pcalm.groupby("width")["mean"].idxmax()]
        tried = ", ".join(f"N = {r.width}: {r.label}" for _, r in best.iterrows())
        lines.append(f"CLAIM at L = {depth}, the best budget tried per width ({tried}): "
                     + overall(best.verdict))
    return lines


def markdown(table, depth: int) -> str:
    head = ["N", "L", "variant", "eta_h", "BP (%)", "this (%)", "d = this − BP", "95 % CI",
            "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        lines.append(f"| {r.width} | {depth} | {r.label} | {r.eta_h:.4f} | {r.bp_mean:.1f} ± "
                     f"{r.bp_sd:.1f} | {r.mean_acc:.1f} ± {r.sd_acc:.1f} | {r['mean']:+.1f} ± "
                     f"{r.sd:.1f} | [{r.ci_low:+.1f}, {r.ci_high:+.1f}] | {r.verdict} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ diagnostics
def cell_files(out: Path, variant: str):
    """(width, seed) -> (cell config dict, final weights path) of a finished variant."""
    import yaml

    from ctpc import open_results
    files = {}
    with open_results(out / f"{variant}.nc") as ds:
        cells_dir = Path(ds.attrs["cells_dir"])
        for w in ds[WIDTH].values.tolist():
            for s in ds[SEED].values.tolist():
                cell = ds.sel({WIDTH: w, SEED: s})
                if str(cell["status"].values) != "ok":
                    continue
                stem = Path(str(cell["cell_file"].values)).stem
                with open_results(cells_dir / f"{stem}.nc") as c:
                    cfg = yaml.safe_load(c.attrs["config"])
                weights = [p for p in (cells_dir / f"{stem}.weights.npz",
                                       cells_dir / f"{stem}.nc.weights.npz") if p.exists()]
                files[(int(w), int(s))] = (cfg, weights[0] if weights else None)
    return files


_ARRIVALS: dict = {}


def arrival_run(cfg: dict, weights: Path | None, steps: int):
    """The inference of one presentation of the probe batch (the first batch of the training
    split, as training's probe) in the training's dtype for ``steps`` steps, at the cell's initial weights
    (``weights`` None: its seed) or at the given weights; per-layer series only."""
    import ctpc
    c = {k: v for k, v in cfg.items() if k not in ("training", "sweep", "output")}
    c = {**c, "device": "cpu", "name": "arrival"}        # the training's own dtype
    c["data"] = {k: v for k, v in c["data"].items()
                 if k not in ("train_subset", "test_subset", "drop_last")}
    c["data"].update({"split": "train", "offset": 0, "shuffle": False})
    c["network"] = {**c["network"], "weights": None if weights is None else str(weights)}
    c["integrator"] = {**c["integrator"], "budget": steps}
    # every 2nd step: the per-layer summaries (a weight read-out each) dominate the run, and
    # the crossing is interpolated between records (an arrival step to within one step)
    c["record"] = {"every": 2, "variables": []}
    # the variants of one step rule share their initial weights: one run serves them all
    key = json.dumps(c, sort_keys=True, default=str)
    if key not in _ARRIVALS:
        _ARRIVALS[key] = ctpc.simulate(c, progress=False)
    return _ARRIVALS[key]


def diagnostics(out: Path, depth: int, variants=VARIANTS, progress=True):
    """Per PC-ALM variant, width, seed, layer, at the start (initial weights) and end (trained
    weights): the step at which the layer's credit first reaches half of the BP adjoint's norm
    (its fixed-point value; inference run to 4L), whether that is within the variant's T, and
    the BP cosine and relative error of W_l's update at T as training measured them on the probe
    batch (evaluations 0 and last)."""
    import numpy as np
    import pandas as pd

    from ctpc import open_results
    from ctpc.analysis import credit_arrival
    steps = 4 * depth
    rows, parts = [], []
    for v in variants:
        if v.method != "pcalm" or not (out / f"{v.name}.nc").exists():
            continue
        # one file per variant, reused while it is newer than the variant's sweep: a report
        # after a further variant has finished does not rerun the others' inference
        cache = out / f"diagnostics_{v.name}.csv"
        if cache.exists() and cache.stat().st_mtime > (out / f"{v.name}.nc").stat().st_mtime:
            parts.append(pd.read_csv(cache))
            continue
        first = len(rows)
        T = int(round(v.budget_factor * depth))
        with open_results(out / f"{v.name}.nc") as ds:
            ds = ds.load()
        for (w, s), (cfg, weights) in cell_files(out, v.name).items():
            cell = ds.sel({WIDTH: w, SEED: s})
            evals = cell["eval_update"].values
            last = int(np.nanargmax(np.where(np.isfinite(evals), evals, -1)))
            for when, wts, ev in (("start", None, 0), ("end", weights, last)):
                if when == "end" and wts is None:
                    continue
                run = arrival_run(cfg, wts, steps)
                arr = credit_arrival(run, 0.5, reference="bp_adjoint")
                cos = cell["bp_cos"].isel(eval=ev).values
                rel = cell["bp_relerr"].isel(eval=ev).values
                for layer in arr["layer"].values.tolist():
                    step = float(arr["arrival_step"].sel(layer=layer))
                    rows.append({"variant": v.name, "label": v.label, "T": T, "width": w,
                                 "seed": s, "when": when, "layer": layer,
                                 "arrival_step": step,
                                 "arrived_by_T": bool(np.isfinite(step) and step <= T),
                                 "bp_cos_W": float(cos[layer - 1]),
                                 "bp_relerr_W": float(rel[layer - 1])})
                if progress:
                    print(f"  diagnostics {v.name} N = {w} seed {s} {when}", flush=True)
        pd.DataFrame(rows[first:]).to_csv(cache, index=False)
    return pd.concat(parts + [pd.DataFrame(rows)], ignore_index=True)


def diagnostics_summary(diag):
    """Per variant, width and start/end: W_1's cosine and relative error, the first layer's
    arrival step (median over seeds) and the share of layers whose credit arrived by T."""
    import pandas as pd
    if diag.empty:
        return pd.DataFrame()
    g = diag.groupby(["variant", "label", "T", "width", "when"], sort=False)
    first = diag[diag.layer == 1].groupby(["variant", "width", "when"], sort=False)
    out = g.agg(arrived_share=("arrived_by_T", "mean")).reset_index()
    f = first.agg(W1_cos=("bp_cos_W", "mean"), W1_relerr=("bp_relerr_W", "mean"),
                  layer1_arrival=("arrival_step", "median")).reset_index()
    return out.merge(f, on=["variant", "width", "when"])


# ------------------------------------------------------------------ figures
def figures(out: Path, table, diag, depth: int, rule: Rule) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt
    import numpy as np
    written = []
    if len(table):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
        ax.axhspan(-rule.band, rule.band, color="0.9", label=f"±{rule.band:g} points")
        ax.axhline(0, color="0.5", lw=0.8)
        for i, (w, g) in enumerate(table[table.method == "pcalm"].groupby("width")):
            for rule_name, marker in (("paper", "o"), ("exact", "s")):
                gg = g[g.step_rule == rule_name].sort_values("budget_factor")
                if gg.empty:
                    continue
                x = gg.budget_factor + 0.04 * (i - 0.5) + (0.08 if rule_name == "exact" else 0)
                ax.errorbar(x, gg["mean"], yerr=[gg["mean"] - gg.ci_low, gg.ci_high - gg["mean"]],
                            fmt=marker + ("-" if rule_name == "paper" else ""), color=f"C{i}",
                            capsize=3, mfc="white" if rule_name == "exact" else None,
                            label=f"N = {w}" + (", exact η_h" if rule_name == "exact" else ""))
        ax.set_xlabel("inference budget T / L")
        ax.set_ylabel("PC-ALM − BP (points)")
        ax.set_title(f"Test accuracy gap at L = {depth} ({int(100 * rule.confidence)} % CI)")
        ax.set_xticks(sorted(set(table.budget_factor.dropna())))
        lims = np.concatenate([table.ci_low.values, table.ci_high.values, [-3, 3]])
        lims = lims[np.isfinite(lims)]
        ax.set_ylim(min(lims) - 1, max(lims) + 1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
        p = out / "gap_vs_budget.png"
        fig.savefig(p, dpi=130)
        plt.close(fig)
        written.append(p)
    if len(diag):
        widths = sorted(diag.width.unique())
        fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths) + 1.6, 3.8),
                                 sharey=True, squeeze=False, constrained_layout=True)
        d2 = diag[diag.variant == VARIANTS[0].name]
        for ax, w in zip(axes[0], widths):
            for when, ls in (("start", "--"), ("end", "-")):
                g = d2[(d2.width == w) & (d2.when == when)].groupby("layer")["arrival_step"]
                med = g.median()
                ax.plot(med.index, med.values, ls, color="C0", label=f"{when} of training")
            for f, c in ((2, "C3"), (3, "C2"), (4, "C1")):
                ax.axhline(f * depth, color=c, lw=0.8, ls=":", label=f"T = {f}L")
            ax.set_title(f"N = {w}, L = {depth}")
            ax.set_xlabel("hidden layer l (1 = next to the input)")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0][0].set_ylabel("step where credit reaches ½ BP adjoint")
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
        p = out / "arrival.png"
        fig.savefig(p, dpi=130)
        plt.close(fig)
        written.append(p)
    return written


def report(out: Path, study: str, rule: Rule = Rule(), *, with_diagnostics=True,
           progress=True) -> list[str]:
    """Tables, diagnostics and figures from whatever has finished; returns the printed lines."""
    depth = STUDIES[study]["depth"]
    acc = final_accuracy(out)
    acc.to_csv(out / "accuracy.csv", index=False)
    table = verdict_table(acc, rule)
    table.to_csv(out / "verdicts.csv", index=False)
    lines = [rule.text()] + status_lines(table, depth)
    (out / "verdicts.md").write_text(markdown(table, depth) + "\n\n" + "\n".join(
        "    " + line for line in lines) + "\n")
    diag = diagnostics(out, depth, progress=progress) if with_diagnostics else None
    import pandas as pd
    diag = diag if diag is not None else pd.DataFrame()
    if len(diag):
        diag.to_csv(out / "diagnostics.csv", index=False)
        diagnostics_summary(diag).to_csv(out / "diagnostics_summary.csv", index=False)
    figures(out, table, diag, depth, rule)
    (out / "README.txt").write_text(README_TXT.format(study=study, depth=depth))
    return lines


README_TXT = """sims/claim.py --dataset {study}: the claim test at L = {depth}.
<variant>.nc          one sweep per variant (widths x seeds); <variant>.cells/ its cells
accuracy.csv          final test accuracy (%) per variant, width and seed
verdicts.csv / .md    per width and variant: means, paired difference to BP, interval, verdict
diagnostics.csv       PC-ALM runs, per layer, at the start and end of training: the step where
                      the credit reaches half the BP adjoint's norm (inference run to 4L), and
                      the BP cosine / relative error of W_l's update on the probe batch
diagnostics_summary.csv  the same summarised per variant and width (W_1, layer 1, share arrived)
diagnostics_<variant>.csv  one variant's rows (reused while newer than <variant>.nc)
gap_vs_budget.png     PC-ALM - BP against T / L, with intervals
arrival.png           credit arrival step per layer, start and end of training
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--small", action="store_true", help="tiny digits instance (seconds)")
    p.add_argument("--out", type=Path)
    p.add_argument("--scheduler")
    p.add_argument("--workers", type=int)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="no training: tables and figures from the finished cells")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="skip the per-layer arrival runs (the slow part of the report)")
    d = Rule()
    p.add_argument("--band", type=float, default=d.band, help="'matches' band (points)")
    p.add_argument("--mean-tol", type=float, default=d.mean_tol,
                   help="'matches' when the interval contains 0 and |mean| <= this")
    p.add_argument("--behind", type=float, default=d.behind,
                   help="'behind' when the interval lies below -this")
    p.add_argument("--confidence", type=float, default=d.confidence)
    a = p.parse_args(argv)
    rule = Rule(a.band, a.mean_tol, a.behind, a.confidence)
    study = "small" if a.small else a.dataset
    out = a.out or ROOT / "runs" / f"claim_{study}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not a.report_only:
        run(out, study, scheduler=a.scheduler, n_workers=a.workers, progress=not a.quiet)
    for line in report(out, study, rule, with_diagnostics=not a.no_diagnostics,
                       progress=not a.quiet):
        print(line)
    print(f"wrote {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
