"""Benchmark one training step's workload on the CPU (and CUDA when present), every variant
interleaved in one run: T inference steps of the discrete algorithm from the feed-forward state
plus the weight read-out (one training step before the optimiser), float32, ReLU, PC-ALM,
D = 784, O = 10 (the paper's MNIST shapes, synthetic inputs).

Variants (each checked to compute the same read-out before it is timed):
  loop          ctpc's solver loop: make_solver + integrate (no divergence check) + read-out
  loop+check    the same with the per-step divergence check (one host sync per 16 steps)
  compiled      the loop with torch.compile'd chunks of steps (make_solver(..., compile=True))
  rule          training's eager rule call: the loop plus the update's statistics (loss at the
                start, energy, norms), no optimiser
  fused         the same rule call compiled (ctpc.core.compiled: what training with
                integrator.compile: true runs on the CPU): one program up to
                ctpc.core.compiled.WHOLE_STEPS_MAX steps, else programs of CHUNK_STEPS steps (a head,
                middle chunks, a tail); compile time reported separately
  fused-whole   the same as one program however many steps (what ctpc did before chunking;
                its compile time grows with T)
  fused-chunked the same in programs of CHUNK_STEPS steps however few steps
                (WHOLE_STEPS_MAX = CHUNK_STEPS)
  fused-loop    the same with integrator.compile: loop: one program whose steps are a
                torch.while_loop over one step's code instead of unrolled (compiles in
                seconds whatever T)
  simulate      ctpc.simulate with the default recording (per-layer summaries and the traces of
                sample 0 at every step), end to end (build, BP reference, dataset)
  simulate-1slot the default recording summarised one slot at a time (RECORD_CHUNK_BYTES = 1:
                a chunk of one slot; what the chunked recorder replaced)
  simulate-none ctpc.simulate recording only the first and last step, no traces
  simulate-full ctpc.simulate recording every step of every variable of every sample (held
                in memory, not written; cells whose traces fit 300 MB)
  stream        (its own table, first cell only, 5 repeats) full traces written to a file:
                held in memory then written, against streamed to disk while running
  jax           sims/jax_pcalm.py (jit + lax.scan) on the same weights and batch, in the same
                process and interleaved, when jax is importable
  R replicas    R networks of the same cell as one tensor program (time for all R)

    python sims/bench_step.py [--threads 2] [--repeats 31] [--cells all|small]
           [--variants loop,loop+check,...] [--out docs/bench_step.json]

Run it twice (--threads 2 and --threads 1) for the thread comparison: torch's threads are set
with torch.set_num_threads, JAX's through XLA_FLAGS before jax is imported.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELLS = {"32,32,64,64": (32, 32, 64, 64), "128,32,64,64": (128, 32, 64, 64),
         "8,8,16,64": (8, 8, 16, 64), "32,128,256,64": (32, 128, 256, 64)}
REPLICA_CELLS = ("32,32,64,64", "8,8,16,64")
D, O = 784, 10


NO_RECORD = object()


def config(n, l, t, b, *, seed=0, dtype="float32", record=NO_RECORD, compile_=False):
    """The cell's config; ``record``: a record section, None for the defaults, or (the default
    here) only the first and last step without traces."""
    cfg = {"name": "bench", "dtype": dtype, "device": "cpu", "seed": seed,
           "network": {"width": n, "depth": l, "activation": "relu", "input_dim": D,
                       "output_dim": O},
           "data": {"source": "synthetic", "batch_size": b},
           "dynamics": {"method": "pcalm", "state_lr": 0.25, "alpha": 1.0},
           "integrator": {"scheme": "discrete", "dt": 1.0, "budget": t},
           "record": {"every": t, "variables": []} if record is NO_RECORD else record}
    if record is None:
        del cfg["record"]
    if compile_:
        cfg["integrator"]["compile"] = True
    return cfg


def ctpc_loop(cfgs, check: bool):
    """The solver loop of R = len(cfgs) replicas + the read-out, as training runs it."""
    import torch

    import ctpc
    from ctpc.core.engine import integrate
    from ctpc.core.solvers import make_solver
    from ctpc.build.objects import build_model

    loaded = [ctpc.load_config(c) for c in cfgs]
    model = build_model(loaded)
    dyn, p, it = model.dyn, model.params(), loaded[0].integrator
    solver = make_solver(dyn, it.scheme, compile=it.compile)

    def run():
        with torch.no_grad():
            carry = solver.init(dyn.initial_state(p), p)
            out = integrate(solver, carry, p, it.n_steps, dt=model.dt,
                            check_every=16 if check else None)
            S = out.final_state()
            return dyn.weight_gradients(S, dyn.residuals(S, p), p)
    return run


def ctpc_rule(cfg, fused: bool, whole_max: int | None = None, mode: str = "unrolled"):
    """One training update's rule call (inference + read-out + statistics, no optimiser): the
    eager :class:`InferenceRule`, or with ``fused`` the whole presentation compiled
    (:mod:`ctpc.core.compiled`, what training with integrator.compile: true runs); ``whole_max``:
    ``ctpc.core.compiled.WHOLE_STEPS_MAX`` for this variant's calls; ``mode``: integrator.compile's
    'unrolled' (true) or 'loop'."""
    import torch

    import ctpc
    import ctpc.core.compiled
    from ctpc.core.solvers import make_solver
    from ctpc.build.objects import build_model
    from ctpc.training.rules import CompiledInferenceRule, InferenceRule

    loaded = ctpc.load_config(cfg)
    model = build_model([loaded])
    it = loaded.integrator
    solver = make_solver(model.dyn, it.scheme)
    args = (model.dyn, solver, it.n_steps, model.rates, "pcalm")
    rule = (CompiledInferenceRule(*args, batch_size=model.x.shape[1], mode=mode, dt=model.dt)
            if fused else InferenceRule(*args, dt=model.dt))

    def run():
        default = ctpc.core.compiled.WHOLE_STEPS_MAX
        if whole_max is not None:
            ctpc.core.compiled.WHOLE_STEPS_MAX = whole_max
        try:
            with torch.no_grad():
                return rule(model.weights, model.x, model.y)[0]
        finally:
            ctpc.core.compiled.WHOLE_STEPS_MAX = default
    return run


def ctpc_simulate(cfg, chunk_bytes=None, out=None):
    """ctpc.simulate of ``cfg``; ``chunk_bytes``: the recorder's chunk size for this call."""
    import ctpc
    import ctpc.sim.recording
    loaded = ctpc.load_config(cfg)

    def run():
        default = ctpc.sim.recording.RECORD_CHUNK_BYTES
        if chunk_bytes is not None:
            ctpc.sim.recording.RECORD_CHUNK_BYTES = chunk_bytes
        try:
            ds = ctpc.simulate(loaded, out=out, overwrite=True)   # timed again and again
            ds.close()
        finally:
            ctpc.sim.recording.RECORD_CHUNK_BYTES = default
    return run


FULL = {"every": 1, "variables": ["h", "lam", "err", "credit"], "samples": "all"}


def stream_costs(cell, repeats: int, sync) -> dict:
    """Full traces of ``cell`` written to a file: in memory then written (stream_mb raised
    above the run's records) against streamed while running (stream_mb lowered below)."""
    import tempfile
    n, l, t, b = cell
    out = Path(tempfile.mkdtemp()) / "bench.nc"
    fns = {"full, in memory + write": ctpc_simulate(
               config(n, l, t, b, record={**FULL, "stream_mb": 1e5}), out=out),
           "full, streamed + write": ctpc_simulate(
               config(n, l, t, b, record={**FULL, "stream_mb": 1.0}), out=out),
           "none + write": ctpc_simulate(config(n, l, t, b), out=out)}
    return median_interleaved(fns, repeats, sync)


# A variant shorter than this runs several times in a row per round, its first call untimed
SLICE_S = 0.02


def median_interleaved(fns: dict, repeats: int, sync) -> dict:
    """Warm up each, then ``repeats`` rounds calling every variant in turn.

    Interleaving spreads slow drifts of the machine over every variant. But a call that
    directly follows another variant also pays for that variant's idle threads (OpenMP's and
    XLA's workers spin for a while after their work) and finds its own asleep: on 2 cores that
    doubled the sub-millisecond calls of the tiny cell, for every variant alike. So a variant
    faster than SLICE_S runs a slice of calls per round (enough for SLICE_S, at most 20), the
    first of which settles the threads and is not timed, as in a training loop where updates
    follow each other."""
    warm = {}
    for k, fn in fns.items():
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            sync()
        warm[k] = time.perf_counter() - t0
    slices = {k: 1 if w >= SLICE_S else min(20, 1 + math.ceil(SLICE_S / max(w, 1e-6)))
              for k, w in warm.items()}
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            for j in range(slices[k]):
                t0 = time.perf_counter()
                fn()
                sync()
                if slices[k] == 1 or j > 0:
                    times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def jax_step(n, l, t, b):
    """sims/jax_pcalm.py's training step on the same weights and batch as ctpc's cell."""
    import importlib.util


    import ctpc
    from ctpc.data import load_batch
    from ctpc.core.network import init_weights
    spec = importlib.util.spec_from_file_location("jax_pcalm", HERE / "jax_pcalm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = ctpc.load_config(config(n, l, t, b))
    x, y = load_batch(cfg.data, cfg.network, cfg.seed)
    run = mod.make_training_step(init_weights(cfg), x, y, activation="relu", T=t, eta=0.25,
                                 alpha=1.0, dtype="float32")
    return run


def check_same(fns_ref, fns_other, tol=1e-4):
    a, b = fns_ref(), fns_other()
    err = max(float((x - y).abs().max() / (x.abs().max() + 1e-30))
              for x, y in zip(a.tensors, b.tensors))
    assert err < tol, f"variants disagree: relative {err:.2e}"
    return err


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--cells", default="all", help="all, or comma-separated N,L,T,B;... keys")
    p.add_argument("--variants", default="loop,loop+check,compiled,rule,fused,simulate,simulate-1slot,"
                                         "simulate-none,simulate-full,replicas,jax,stream")
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    if a.threads == 1:    # XLA reads its thread settings once, before jax is imported
        os.environ["XLA_FLAGS"] = ("--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")
    import torch
    torch.set_num_threads(a.threads)
    try:
        import jax  # noqa: F401
        has_jax = True
    except ImportError:
        has_jax = False
    from ctpc.core.compiled import CHUNK_STEPS
    variants = a.variants.split(",")
    cells = list(CELLS) if a.cells == "all" else a.cells.split(";")
    results = {"machine": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "threads": a.threads,
               "torch": torch.__version__, "load_before": os.getloadavg(), "cells": {}}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for key in cells:
        n, l, t, b = CELLS[key]
        fns = {}
        if "loop" in variants:
            fns["loop"] = ctpc_loop([config(n, l, t, b)], check=False)
        if "loop+check" in variants:
            fns["loop+check"] = ctpc_loop([config(n, l, t, b)], check=True)
        if "compiled" in variants:
            t0 = time.perf_counter()
            fns["compiled"] = ctpc_loop([config(n, l, t, b, compile_=True)], check=False)
            fns["compiled"]()
            results.setdefault("compile_s", {})[key] = time.perf_counter() - t0
        if "rule" in variants:
            fns["rule"] = ctpc_rule(config(n, l, t, b), fused=False)
        # the compiled rule's forms; each one's first call (its compile) is timed separately
        for name, form in (("fused", {}), ("fused-loop", {"mode": "loop"}),
                           ("fused-whole", {"whole_max": 10 ** 9}),
                           ("fused-chunked", {"whole_max": CHUNK_STEPS})):
            if name in variants:
                t0 = time.perf_counter()
                fns[name] = ctpc_rule(config(n, l, t, b), fused=True, **form)
                fns[name]()
                compile_s = time.perf_counter() - t0
                results.setdefault(f"{name.replace('-', '_')}_compile_s", {})[key] = compile_s
                print(key, f"{name}: compiled in", round(compile_s, 1), "s", flush=True)
        if "simulate" in variants:
            fns["simulate"] = ctpc_simulate(config(n, l, t, b, record=None))
        if "simulate-1slot" in variants:
            fns["simulate-1slot"] = ctpc_simulate(config(n, l, t, b, record=None), chunk_bytes=1)
        if "simulate-none" in variants:
            fns["simulate-none"] = ctpc_simulate(config(n, l, t, b))
        if "simulate-full" in variants and 16 * (t + 2) * (l - 1) * b * n <= 300 * 2 ** 20:
            fns["simulate-full"] = ctpc_simulate(config(n, l, t, b, record={
                **FULL, "stream_mb": 1e5}))
        if "replicas" in variants and key in REPLICA_CELLS:
            fns[f"R={a.replicas}"] = ctpc_loop(
                [config(n, l, t, b, seed=s) for s in range(a.replicas)], check=False)
        if "jax" in variants and has_jax:
            fns["jax"] = jax_step(n, l, t, b)
        if "loop" in fns and "compiled" in fns:
            check_same(fns["loop"], fns["compiled"])
        for name in ("fused", "fused-whole", "fused-chunked", "fused-loop"):
            if "loop" in fns and name in fns:
                check_same(fns["loop"], fns[name])
        results["cells"][key] = median_interleaved(fns, a.repeats, sync)
        print(key, {k: round(v, 3) for k, v in results["cells"][key].items()}, flush=True)
    if "stream" in variants:
        key = cells[0]
        results["stream"] = {key: stream_costs(CELLS[key], 5, sync)}
        print("stream", key, {k: round(v, 1) for k, v in results["stream"][key].items()},
              flush=True)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
