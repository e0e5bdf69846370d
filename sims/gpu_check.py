"""The one script to run when a GPU is lent: checks ctpc's CUDA path and times it, in one call,
within 8 minutes on one GPU, and writes a table.

    python sims/gpu_check.py [--out runs/gpu_check] [--quick] [--pytest-timeout 240]

What it does, in order (each part prints what it checks; without CUDA every CUDA part is
printed as SKIPPED and the table says so):

1. Device: name, memory, torch/CUDA versions.
2. Correctness: the CUDA test subset under `pytest --device cuda`: tests/test_cuda.py (float64
   CUDA = CPU to 1e-10 for simulate and train, float32 within 1e-3, divergence and recording
   the same, the CUDA-graph update = the eager one) and the device-independent exactness tests
   (discrete vs the numpy reference, PC-ALM's fixed point, replicas, training exactness).
3. Training step (the GPU issue's anchors; PC-ALM, ReLU, D = 784, O = 10, Adam; median of 20
   after warm-up), per cell (N, L, T, B) in (32, 32, 64, 64), (128, 128, 256, 64),
   (512, 64, 128, 256): eager; CUDA graph (training.cuda_graph); CUDA graph with TF32 matmuls
   and its BP-cosine cost against float32; and at (512, 64, 128, 256) the ceiling: the same
   batched products alone, captured in a CUDA graph, at the same precision.
4. Replicas: R = 8 at (32, 32, 64, 64) as one graph.
5. Grid throughput: a slice of the MNIST grid (one replica group per depth, methods x seeds)
   timed per update, and the projected time of the full grid (5 widths x 5 depths x 3
   activations x 3 seeds x 3 methods, one epoch, T = 2L) against the 30-minute target.
6. Writes OUT/gpu_check.json and OUT/gpu_check.md (the table for docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = [(32, 32, 64, 64), (128, 128, 256, 64), (512, 64, 128, 256)]
CEILING_CELL = (512, 64, 128, 256)
PYTEST_FILES = ["tests/test_cuda.py", "tests/test_discrete.py", "tests/test_exactness.py",
                "tests/test_replicas.py", "tests/test_training_exact.py"]
GRID = {"widths": [8, 16, 32, 64, 128], "depths": [8, 16, 32, 64, 128], "activations": 3,
        "seeds": 3, "methods": 3, "updates": 937}       # one MNIST epoch of batches of 64


def say(msg: str) -> None:
    print(msg, flush=True)


def device_info() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, memory_gb=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, capability=f"{p.major}.{p.minor}")
    return info


def run_pytest(timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", "cuda",
           *PYTEST_FILES]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        return {"returncode": proc.returncode, "summary": tail,
                "seconds": round(time.perf_counter() - t0, 1),
                "failures": [l for l in proc.stdout.splitlines() if l.startswith("FAILED")]}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s"}


# ---------------------------------------------------------------------- training steps
def synthetic_data(directory: Path, n: int = 4096) -> Path:
    rng = np.random.default_rng(0)
    path = directory / "mnist_shaped.npz"
    np.savez(path, x_train=rng.standard_normal((n, 784)).astype(np.float32),
             y_train=rng.integers(0, 10, n), x_test=rng.standard_normal((512, 784)),
             y_test=rng.integers(0, 10, 512))
    return path


def trainer(data: Path, n, l, t, b, *, replicas=1, graph=False, dtype="float32", method="pcalm"):
    from ctpc.training import prepare_config
    from ctpc.training.loop import Trainer
    from ctpc.training.setup import build_training
    cfgs = [prepare_config({
        "dtype": dtype, "device": "cuda", "seed": s,
        "network": {"width": n, "depth": l, "activation": "relu"},
        "data": {"source": "npz", "path": str(data), "batch_size": b},
        "dynamics": {"method": method, "state_lr": 0.25, "alpha": 1.0},
        "integrator": {"scheme": "discrete", "dt": 1.0, "budget": t},
        "training": {"epochs": 10_000, "checkpoint_every": None, "cuda_graph": graph}})
        for s in range(replicas)]
    return Trainer(build_training(cfgs))


def time_cuda(fn, repeats: int = 20, warmup: int = 5) -> float:
    """Median ms of fn() over ``repeats`` calls, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def step_fn(tr):
    state = {"u": 0}

    def fn():
        with torch.no_grad():
            tr._update(state["u"] % tr.s.total_updates)
        state["u"] += 1
    return fn


def tf32_cosine_cost(tr32) -> dict:
    """BP cosine of the read-out (probe batch) in TF32 against float32, same weights."""
    from ctpc.training.metrics import probe_alignment
    from ctpc.training.loop import probe_batch
    net, w = tr32.s.model.net, tr32.learn.params
    x, y = probe_batch(tr32.s)
    with torch.no_grad():
        cos32, _, g32 = probe_alignment(tr32.s.rule, net, w, x, y)
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            cos_tf, _, g_tf = probe_alignment(tr32.s.rule, net, w, x, y)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
    return {"bp_cos_global_fp32": float(g32.mean()), "bp_cos_global_tf32": float(g_tf.mean()),
            "min_layer_cos_fp32": float(cos32.min()), "min_layer_cos_tf32": float(cos_tf.min())}


def matmul_ceiling(n, l, t, b) -> float:
    """ms of the batched products of one training step alone (2 per inference step over the
    L-2 square layers, the read-out's), captured in a CUDA graph, float32."""
    h = l - 1
    a = torch.randn(h - 1, b, n, device="cuda")
    w = torch.randn(h - 1, n, n, device="cuda")
    out = torch.empty_like(a)
    grads = torch.empty(h - 1, n, n, device="cuda")

    def products():
        for _ in range(t):
            torch.bmm(a, w, out=out)
            torch.bmm(a, w.transpose(1, 2), out=out)
        torch.bmm(a.transpose(1, 2), a, out=grads)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        products()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        products()
    return time_cuda(g.replay)


def bench_steps(data: Path, quick: bool) -> dict:
    out = {}
    for cell in ANCHORS[:1] if quick else ANCHORS:
        n, l, t, b = cell
        key = ",".join(map(str, cell))
        say(f"  training step at (N, L, T, B) = {cell}")
        row = {}
        eager = trainer(data, *cell)
        row["eager_ms"] = time_cuda(step_fn(eager))
        graphed = trainer(data, *cell, graph=True)
        row["graph_ms"] = time_cuda(step_fn(graphed))
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            row["graph_tf32_ms"] = time_cuda(step_fn(trainer(data, *cell, graph=True)))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        row.update(tf32_cosine_cost(eager))
        if cell == CEILING_CELL:
            row["matmul_ceiling_ms"] = matmul_ceiling(*cell)
            row["graph_over_ceiling"] = row["graph_ms"] / row["matmul_ceiling_ms"]
        out[key] = row
        say("    " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    return out


def bench_replicas(data: Path) -> dict:
    cell = ANCHORS[0]
    one = time_cuda(step_fn(trainer(data, *cell, graph=True)))
    eight = time_cuda(step_fn(trainer(data, *cell, graph=True, replicas=8)))
    say(f"  R = 8 at {cell}: {eight:.3f} ms for all 8 ({eight / one:.2f}x one: {one:.3f} ms)")
    return {"one_ms": one, "eight_ms": eight, "ratio": eight / one}


def grid_projection(data: Path, quick: bool) -> dict:
    """Time one replica group (methods pc+pcalm x 3 seeds, and bp x 3 seeds) per (width,
    depth) of a slice, then project the full grid from the per-update times."""
    widths = [8, 32, 128] if not quick else [32]
    depths = GRID["depths"] if not quick else [8, 32]
    per_update = {}
    for n in widths:
        for l in depths:
            inf = time_cuda(step_fn(trainer(data, n, l, 2 * l, 64, replicas=6, graph=True)),
                            repeats=10)
            bp = time_cuda(step_fn(trainer(data, n, l, 2 * l, 64, replicas=3, graph=True,
                                           method="bp")), repeats=10)
            per_update[(n, l)] = (inf, bp)
            say(f"  N={n:4d} L={l:4d}: {inf:.3f} ms per update for 6 PC/PC-ALM replicas, "
                f"{bp:.3f} ms for 3 BP replicas")
    # widths not timed: the nearest timed width (a conservative choice for the wider ones)
    total_ms = 0.0
    for n in GRID["widths"]:
        near = min(widths, key=lambda w: (abs(np.log2(w / n)), -w))
        for l in GRID["depths"]:
            dl = min(depths, key=lambda d: abs(np.log2(d / l)))
            inf, bp = per_update[(near, dl)]
            scale = (l / dl) ** 2 if dl != l else 1.0     # T = 2L steps of L layers
            total_ms += GRID["activations"] * GRID["updates"] * (inf + bp) * scale
    minutes = total_ms / 60_000
    cells = (len(GRID["widths"]) * len(GRID["depths"]) * GRID["activations"] * GRID["seeds"]
             * GRID["methods"])
    say(f"  projected full grid ({cells} cells, one epoch): {minutes:.1f} GPU-minutes "
        f"(target 30); {cells / max(minutes, 1e-9):.1f} cells per GPU-minute")
    return {"minutes": minutes, "cells": cells, "cells_per_minute": cells / max(minutes, 1e-9),
            "timed": {f"{n},{l}": v for (n, l), v in per_update.items()}}


def write_table(results: dict, out: Path) -> None:
    lines = ["# gpu_check", "", f"device: {results['device']}", ""]
    if not results["device"].get("cuda_available"):
        lines += ["**CUDA: not available. Every CUDA part below was SKIPPED.**", ""]
    lines += ["| part | result |", "|---|---|"]
    for part, value in results.items():
        if part != "device":
            lines.append(f"| {part} | {json.dumps(value, default=str)[:400]} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu_check")
    p.add_argument("--quick", action="store_true", help="one cell per part (a smoke run)")
    p.add_argument("--pytest-timeout", type=int, default=240)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {"device": device_info()}
    say(f"1. device: {results['device']}")
    if not torch.cuda.is_available():
        for part in ("2. correctness (pytest --device cuda)", "3. training step", "4. replicas",
                     "5. grid throughput"):
            say(f"{part}: SKIPPED (no CUDA GPU)")
            results[part.split(". ", 1)[1]] = "SKIPPED: no CUDA GPU"
        write_table(results, out)
        say(f"wrote {out / 'gpu_check.md'} ({time.perf_counter() - t0:.1f} s)")
        return 0
    say("2. correctness: pytest --device cuda " + " ".join(PYTEST_FILES))
    results["correctness"] = run_pytest(a.pytest_timeout)
    say(f"   {results['correctness'].get('summary')}")
    data = synthetic_data(Path(tempfile.mkdtemp()))
    for name, fn in (("training step", lambda: bench_steps(data, a.quick)),
                     ("replicas", lambda: bench_replicas(data)),
                     ("grid throughput", lambda: grid_projection(data, a.quick))):
        say(f"{len(results) + 1}. {name}")
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - report and go on: device time is scarce
            results[name] = f"FAILED: {type(exc).__name__}: {exc}"
            say(f"   FAILED: {exc}")
        write_table(results, out)        # keep what was measured if the lease runs out
    results["seconds"] = round(time.perf_counter() - t0, 1)
    write_table(results, out)
    say(f"wrote {out / 'gpu_check.md'} and gpu_check.json ({results['seconds']} s)")
    return 0 if results["correctness"].get("returncode") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
