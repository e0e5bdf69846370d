"""Time one training update and its parts, interleaved in one run: the rule alone (inference
+ weight read-out, what any implementation must compute) against the loop's whole update
(batch gather, rule, optimiser step, per-update statistics into device buffers), at the
paper's cell N = 32, L = 32, B = 64, T = 2L = 64 (discrete PC-ALM, ReLU, float32) on
synthetic MNIST-shaped data (D = 784, O = 10).

    python sims/bench_train.py [--threads 2] [--repeats 31] [--width 32 --depth 32]

Prints the medians and the overhead of the optimiser and bookkeeping in per cent (the
training loop's budget: at most 10 %), and checks that no update syncs with the host.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def setup(width, depth, batch, compile_):
    from ctpc.training import prepare_config
    from ctpc.training.loop import Trainer
    from ctpc.training.setup import build_training
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    n = 4096
    np.savez(tmp / "d.npz", x_train=rng.standard_normal((n, 784)), y_train=rng.integers(0, 10, n),
             x_test=rng.standard_normal((512, 784)), y_test=rng.integers(0, 10, 512))
    cfg = prepare_config({
        "dtype": "float32", "device": "cpu",
        "network": {"width": width, "depth": depth, "activation": "relu"},
        "data": {"source": "npz", "path": str(tmp / "d.npz"), "batch_size": batch},
        "dynamics": {"method": "pcalm", "state_lr": 0.25, "alpha": 1.0},
        "integrator": {"scheme": "discrete", "dt": 1.0, "budget": "auto", "compile": compile_},
        "training": {"epochs": 1000, "checkpoint_every": None}})
    return Trainer(build_training(cfg))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--compile", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tr = setup(a.width, a.depth, a.batch, a.compile)
    x, y = tr.batches(0)
    counter = {"u": 0}

    def rule_only():
        with torch.no_grad():
            tr.s.rule(tr.learn.params, x, y)

    def whole_update():
        with torch.no_grad():
            tr._update(counter["u"] % tr.s.total_updates)
        counter["u"] += 1

    fns = {"rule (inference + read-out)": rule_only, "whole update": whole_update}
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {k: [] for k in fns}
    for _ in range(a.repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"N={a.width} L={a.depth} B={a.batch} T={2 * a.depth}, {a.threads} threads, "
          f"compile={a.compile}, load {os.getloadavg()[0]:.2f}")
    for k, v in med.items():
        print(f"  {k:30s} {v:8.3f} ms")
    rule, whole = med["rule (inference + read-out)"], med["whole update"]
    print(f"  optimiser + bookkeeping: {100 * (whole / rule - 1):+.1f} %")


if __name__ == "__main__":
    main()
