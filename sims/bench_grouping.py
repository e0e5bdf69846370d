"""What grouping cells into replica programs buys a training sweep, several ways, in one process:
``capped``, ctpc's grouping (on the CPU a group fits a fraction of the L2 cache, and a replica
bigger than 1/16 of it runs alone: ctpc.sweep.groups); ``capped@F``, groups of at most F of
the L2 of state, whatever a replica's size; ``uncapped``, every cell of a key in one group (how
ctpc grouped before the caps); and ``single``, every cell on its own (``--no-group``).

    python sims/bench_grouping.py [--max-updates 88] [--widths 8,16,32] [--depths 32,64]
                                  [--activations relu] [--order capped,uncapped,single]
                                  [--out runs/bench_grouping]
    python sims/bench_grouping.py --full [--max-updates 220] --order capped,single

The sweep is models/sweeps/grid_digits.yaml (the learning issue's grid) restricted to the
given widths, depths and activations (default ReLU), all three methods and seeds, each cell
stopped after ``--max-updates`` updates (the grid runs 880; the cost per update does not depend
on how many there are). ``--full`` runs every cell of the grid as shipped instead (216 cells,
evaluations every 44 updates), for 880 updates each unless ``--max-updates`` is given. Each
variant runs on a fresh local Dask cluster of 2 workers, one thread each, writing its own sweep;
the table prints the wall time of each and the largest difference of final test accuracy and
training loss between them. The numbers in docs/benchmarks.md ("Grouped sweeps") come from here.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from ctpc.sweep import groups
from ctpc.config.paths import companion_path
from ctpc.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "sweeps" / "grid_digits.yaml"


def run(variant: str, args, out_dir: Path):
    if args.full:
        overrides = [] if args.max_updates is None else [
            f"training.max_updates={args.max_updates}"]
    else:
        updates = args.max_updates or 88
        overrides = [f"sweep.network.width=[{args.widths}]",
                     f"sweep.network.depth=[{args.depths}]",
                     f"sweep.network.activation=[{args.activations}]",
                     f"training.max_updates={updates}", f"training.eval_every={updates}"]
    out = out_dir / f"{variant}.nc"
    shutil.rmtree(companion_path(out, "cells"), ignore_errors=True)
    out.unlink(missing_ok=True)
    fractions = groups.CACHE_FRACTION, groups.REPLICA_FRACTION
    if variant == "uncapped":          # the client groups; workers only run
        groups.CACHE_FRACTION = groups.REPLICA_FRACTION = 1e9
    elif variant.startswith("capped@"):   # a group may hold F of the L2, any replica size
        groups.CACHE_FRACTION = float(variant.partition("@")[2])
        groups.REPLICA_FRACTION = 1e9
    try:
        start = time.perf_counter()
        ds = run_sweep(str(MODEL), overrides, out=out, n_workers=2, progress=False,
                       group=variant != "single")
        wall = time.perf_counter() - start
    finally:
        groups.CACHE_FRACTION, groups.REPLICA_FRACTION = fractions
    return wall, ds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-updates", type=int, default=None,
                   help="updates per cell (default 88; --full: 880, the grid's own)")
    p.add_argument("--widths", default="8,16,32")
    p.add_argument("--depths", default="32,64")
    p.add_argument("--activations", default="relu")
    p.add_argument("--order", default="capped,uncapped,single",
                   help="variants in the order run: capped (ctpc's grouping), capped@F "
                        "(groups of at most F of the L2), uncapped, single (--no-group)")
    p.add_argument("--full", action="store_true", help="the whole grid as shipped")
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
