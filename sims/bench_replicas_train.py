"""What replicas buy in training: train R = 1 and R = 6 configs (seeds 0..R-1) of the digits
training model as one replica program each, interleaved, best of two, and print R=6 / R=1.

    python sims/bench_replicas_train.py [--threads 1] [--cells 8x8,32x32] [--methods pcalm,bp]

A tiny cell is bound by per-operator overhead, which replicas share; a larger one by its batched
products, which they do not. The table in docs/benchmarks.md ("Grouped sweeps") comes from here.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ctpc.training import prepare_config, train_replicas

MODEL = Path(__file__).resolve().parent.parent / "models" / "train_digits.yaml"


def configs(r: int, method: str, width: int, depth: int) -> list:
    return [prepare_config(MODEL, [f"seed={s}", f"dynamics.method={method}",
                                   f"network.width={width}", f"network.depth={depth}",
                                   "network.activation=relu"]) for s in range(r)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cells", default="8x8,32x32", help="NxL,... (default 8x8,32x32)")
    p.add_argument("--methods", default="pcalm,bp")
    p.add_argument("--replicas", type=int, default=6)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
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
