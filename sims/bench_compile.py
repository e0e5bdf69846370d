"""Where compiling a training presentation pays off on the digits grid's shapes: the eager rule
against ``integrator.compile: loop`` (and, with ``--unrolled``, ``true``), per update and
compile time, one thread (as a sweep's workers run).

    python sims/bench_compile.py [--cells 8x64,16x64,32x64,32x32,8x32] [--activations relu,tanh]
                                 [--unrolled] [--repeats 15] [--out docs/bench/compile_grid.json]

Each cell is the digits training model of the grid (models/sweeps/grid_digits.yaml: PC-ALM,
T = 2L, B = 64, D = 64, O = 10, float32). Compile times are those of this process's first call:
cold only with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR=<empty dir>``), and the first
compile of a process also pays inductor's start-up (a few seconds). Per-update times are medians
of ``--repeats`` interleaved rounds; each round calls every variant twice and times the second
call (so each call follows its own kind, as in a training loop). "break-even" is the number of
updates after which a compiled variant's saving per update has paid for its compile.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import ctpc
from ctpc.training.setup import build_training


def config(width: int, depth: int, activation: str, compile_) -> dict:
    return {"name": "bench", "dtype": "float32", "device": "cpu", "seed": 0,
            "network": {"width": width, "depth": depth, "activation": activation},
            "data": {"source": "digits", "batch_size": 64},
            "dynamics": {"method": "pcalm", "rho": 1.0, "state_lr": "auto", "alpha": 1.0},
            "integrator": {"scheme": "discrete", "dt": 1.0, "budget": "auto",
                           "compile": compile_},
            "training": {"epochs": 1}}


def rule_call(width: int, depth: int, activation: str, compile_):
    """(one update's rule call on a training batch, its first call's time in s)."""
    setup = build_training(ctpc.load_config(config(width, depth, activation, compile_)))
    x, y = setup.train.x[:64][None], setup.train.y[:64][None]
    rule, w = setup.rule, setup.model.weights

    def run():
        with torch.no_grad():
            return rule(w, x, y)
    t0 = time.perf_counter()
    run()
    return run, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="8x64,16x64,32x64,32x32,8x32")
    p.add_argument("--activations", default="relu")
    p.add_argument("--unrolled", action="store_true", help="also time integrator.compile: true")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    variants = {"eager": False, "loop": "loop"} | ({"unrolled": True} if a.unrolled else {})
    out = {"threads": a.threads, "torch": torch.__version__, "cells": {}}
    print("| cell (N x L, act) | eager | " + " | ".join(
        f"{v} | compile ({v}) | break-even ({v})" for v in variants if v != "eager") + " |")
    for cell in a.cells.split(","):
        width, depth = map(int, cell.split("x"))
        for act in a.activations.split(","):
            calls = {v: rule_call(width, depth, act, c) for v, c in variants.items()}
            times = {v: [] for v in calls}
            for _ in range(a.repeats):
                for v, (fn, _) in calls.items():
                    fn()
                    t0 = time.perf_counter()
                    fn()
                    times[v].append(time.perf_counter() - t0)
            ms = {v: statistics.median(t) * 1e3 for v, t in times.items()}
            row = {"ms": ms, "compile_s": {v: calls[v][1] for v in calls if v != "eager"}}
            cols = []
            for v in calls:
                if v == "eager":
                    continue
                saved = ms["eager"] - ms[v]
                even = row["compile_s"][v] / (saved / 1e3) if saved > 0 else None
                row.setdefault("break_even_updates", {})[v] = even
                cols.append(f"{ms[v]:.2f} ms ({ms['eager'] / ms[v]:.2f}x) | "
                            f"{row['compile_s'][v]:.1f} s | "
                            + (f"{even:,.0f}" if even is not None else "never"))
            out["cells"][f"{cell},{act}"] = row
            print(f"| {width} x {depth}, {act} | {ms['eager']:.2f} ms | " + " | ".join(cols)
                  + " |", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
