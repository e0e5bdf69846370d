"""What grouping cells into replica programs buys a training sweep, three ways, in one process:
groups capped by the CPU's cache budget (the default), groups of every cell of a key (no cap:
how ctpc grouped before the cap), and every cell on its own (``--no-group``).

    python sims/bench_grouping.py [--max-updates 88] [--widths 8,16,32] [--depths 32,64]
                                  [--order capped,uncapped,single] [--out runs/bench_grouping]

The sweep is models/sweeps/grid_digits.yaml (the learning issue's grid) restricted to ReLU and
the given widths and depths, all three methods and seeds, each cell stopped after
``--max-updates`` updates (the grid runs 880; the cost per update does not depend on how many
there are). Each variant runs on a fresh local Dask cluster of 2 workers, one thread each,
writing its own sweep; the table prints the wall time of each and the largest difference of
final test accuracy and training loss between them. The numbers in docs/benchmarks.md
("Grouped sweeps") come from here.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

import ctpc.sweep.groups as groups
from ctpc.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "sweeps" / "grid_digits.yaml"


def run(variant: str, args, out_dir: Path):
    overrides = [f"sweep.network.width=[{args.widths}]", f"sweep.network.depth=[{args.depths}]",
                 "sweep.network.activation=[relu]", f"training.max_updates={args.max_updates}",
                 f"training.eval_every={args.max_updates}"]
    out = out_dir / f"{variant}.nc"
    shutil.rmtree(out.with_suffix(".cells"), ignore_errors=True)
    out.unlink(missing_ok=True)
    budget = groups.CACHE_FRACTION
    if variant == "uncapped":
        groups.CACHE_FRACTION = 1e9       # the client groups; workers only run
    try:
        start = time.perf_counter()
        ds = run_sweep(str(MODEL), overrides, out=out, n_workers=2, progress=False,
                       group=variant != "single")
        wall = time.perf_counter() - start
    finally:
        groups.CACHE_FRACTION = budget
    return wall, ds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-updates", type=int, default=88)
    p.add_argument("--widths", default="8,16,32")
    p.add_argument("--depths", default="32,64")
    p.add_argument("--order", default="capped,uncapped,single")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_grouping")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in args.order.split(","):
        wall, ds = run(variant, args, args.out)
        results[variant] = (wall, ds)
        print(f"{variant}: {wall:.1f} s ({int(ds.attrs['n_cells'])} cells, "
              f"{int(ds.attrs['n_ok'])} ok)", flush=True)
    ref_wall, ref = results["single"] if "single" in results else next(iter(results.values()))
    print("\n| variant | wall time | vs cell by cell | max |Δ final test acc| "
          "| max |Δ train loss| |")
    print("|---|---|---|---|---|")
    for variant, (wall, ds) in results.items():
        acc = float(np.nanmax(np.abs(ds.final_test_acc.values - ref.final_test_acc.values)))
        loss = float(np.nanmax(np.abs(ds.train_loss.values - ref.train_loss.values)))
        print(f"| {variant} | {wall:.1f} s | {ref_wall / wall:.2f}× | {acc:.3g} | {loss:.2g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
