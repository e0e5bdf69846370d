"""What replicas buy in training: train R = 1 and R = 6 configs (seeds 0..R-1) of the digits
training model (20 epochs: 440 updates) as one replica program each, interleaved, best of two,
and print R=6 / R=1.

    python sims/bench_replicas_train.py [--threads 1] [--cells 8x8,32x32] [--methods pcalm,bp]
    python sims/bench_replicas_train.py --per-presentation [--cells 8x64,16x64,32x32,32x64]
                                        [--group-sizes 1,2,3,4,6] [--repeats 7]

A tiny cell is bound by per-operator overhead, which replicas share; a larger one by its batched
products, which they do not. ``--per-presentation`` times one presentation (T = 2L inference
steps + read-out, PC-ALM, the training rule alone) of groups of R replicas per cell, rounds
interleaved, and prints the median cost per replica and the group's state bytes
(R x H x B x N x 4): where that state outgrows the core's L2 cache, a replica costs more in a
group than alone. The tables in docs/benchmarks.md ("Grouped sweeps") come from here.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ctpc.results.memory import state_bytes
from ctpc.training import prepare_config, train_replicas

MODEL = Path(__file__).resolve().parent.parent / "models" / "train_digits.yaml"


def configs(r: int, method: str, width: int, depth: int) -> list:
    return [prepare_config(MODEL, [f"seed={s}", f"dynamics.method={method}",
                                   f"network.width={width}", f"network.depth={depth}",
                                   "network.activation=relu"]) for s in range(r)]


def presentation(r: int, width: int, depth: int):
    """One training presentation of R PC-ALM replicas (the rule alone), as a callable."""
    from ctpc.training.setup import build_training
    setup = build_training(configs(r, "pcalm", width, depth))
    model, rule = setup.model, setup.rule
    x, y = model.x, model.y

    def run():
        with torch.no_grad():
            return rule(model.weights, x, y)[0]
    return run, setup.cfg


def per_presentation(args) -> None:
    sizes = [int(r) for r in args.group_sizes.split(",")]
    print("| cell (N x L, B = 64) | R | group state | per presentation | per replica |")
    print("|---|---|---|---|---|")
    for cell in args.cells.split(","):
        width, depth = map(int, cell.split("x"))
        fns = {}
        for r in sizes:
            fn, cfg = presentation(r, width, depth)
            fn()                                                  # warm-up
            state = r * state_bytes(cfg)
            fns[r] = (fn, state)
        times = {r: [] for r in sizes}
        for _ in range(args.repeats):                             # rounds interleaved
            for r, (fn, _) in fns.items():
                start = time.perf_counter()
                fn()
                times[r].append(time.perf_counter() - start)
        for r in sizes:
            m = statistics.median(times[r])
            print(f"| {width} x {depth} | {r} | {fns[r][1] / 1024:.0f} KiB | {m * 1e3:.1f} ms "
                  f"| {m / r * 1e3:.1f} ms |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cells", default=None, help="NxL,... (default 8x8,32x32; "
                   "--per-presentation: 8x64,16x64,32x32,32x64)")
    p.add_argument("--methods", default="pcalm,bp")
    p.add_argument("--replicas", type=int, default=6)
    p.add_argument("--per-presentation", action="store_true")
    p.add_argument("--group-sizes", default="1,2,3,4,6")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.per_presentation:
        args.cells = args.cells or "8x64,16x64,32x32,32x64"
        per_presentation(args)
        return 0
    args.cells = args.cells or "8x8,32x32"
    print("| cell | method | R = 1 | R = %d | R = %d / R = 1 | throughput gain |" % ((args.replicas,) * 2))
    print("|---|---|---|---|---|---|")
    for cell in args.cells.split(","):
        width, depth = map(int, cell.split("x"))
        for method in args.methods.split(","):
            one = configs(1, method, width, depth)
            many = configs(args.replicas, method, width, depth)
            train_replicas(one)                                  # warm-up
            best = {1: float("inf"), args.replicas: float("inf")}
            for r, cfgs in ((1, one), (args.replicas, many)) * 2:  # interleaved
                start = time.perf_counter()
                train_replicas(cfgs)
                best[r] = min(best[r], time.perf_counter() - start)
            a, b = best[1], best[args.replicas]
            print(f"| N = {width}, L = {depth} | {method} | {a:.2f} s | {b:.2f} s | {b / a:.2f}× "
                  f"| {args.replicas * a / b:.1f}× |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
