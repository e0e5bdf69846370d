"""Benchmark one training-step-sized workload: T = 2L inference steps + weight-gradient
read-out, N = 32, L = 32, B = 64 (the paper's setting), on CPU and (when present) CUDA.

Compares ctpc's stacked-layer solver with a straightforward per-layer loop (how PC code is
commonly written: a Python list of layers, one small matmul per layer per step), both in
torch on the same device. Prints a markdown table for docs/benchmarks.md.

    python sims/bench_step.py [--width 32 --depth 32 --batch 64 --repeats 20]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import ctpc
from ctpc.integrators import make_solver
from ctpc.model import build_model


def config(width, depth, batch, dtype, scheme):
    length = {"budget": 2 * depth} if scheme == "discrete" else {"steps": 2 * depth}
    return ctpc.load_config({
        "dtype": dtype, "network": {"width": width, "depth": depth, "activation": "relu"},
        "data": {"source": "digits", "batch_size": batch},
        "dynamics": {"method": "pcalm", "state_lr": 0.25, "alpha": 1.0},
        "integrator": {"scheme": scheme, "dt": 1.0, **length},
        "record": {"every": 2 * depth, "variables": []}})


def ctpc_step(cfg, device):
    model = build_model(cfg, device)
    dyn, p = model.dyn, model.params()
    solver = make_solver(dyn, cfg.integrator.scheme, model.dt)  # discrete: pre_dual
    n = cfg.integrator.n_steps

    def run():
        carry = solver.init(dyn.initial_state(p), p)
        for k in range(n):
            carry = solver.step(carry, p, last=k + 1 == n)
        S = solver.state(carry)
        return dyn.weight_gradients(S, dyn.residuals(S, p), p).matrices(0)
    return run


def loop_step(cfg, device):
    """The per-layer baseline: same maths, lists of [B, N] tensors, Python loops over layers."""
    model = build_model(cfg, device)
    net = model.net
    ws = model.weights.matrices(0)
    x, y, phi = model.x[0], model.y[0], net.phi
    eta, alpha, rho, n = 0.25, 1.0, 1.0, cfg.integrator.n_steps
    H = net.n_hidden

    def residuals(h):
        r = [h[0] - net.s_in * x @ ws[0].T]
        for l in range(1, H):
            r.append(h[l] - h[l - 1] - net.s_mid * phi(h[l - 1]) @ ws[l].T)
        return r

    def run():
        h = list(net.feedforward(model.weights, model.x)[:, 0].unbind(0))
        lam = [torch.zeros_like(t) for t in h]
        for k in range(n):
            r = residuals(h)
            g = [rho * r[l] + lam[l] for l in range(H)]
            y_hat = net.s_out * phi(h[-1]) @ ws[-1].T
            new = []
            for l in range(H):
                grad = g[l].clone()
                if l + 1 < H:
                    d = (h[l] > 0).to(h[l].dtype)
                    grad -= g[l + 1] + d * (net.s_mid * g[l + 1] @ ws[l + 1])
                else:
                    grad += net.s_out * (h[l] > 0).to(h[l].dtype) * ((y_hat - y) @ ws[-1])
                new.append(h[l] - eta * grad)
            h = new
            if k + 1 < n:
                r = residuals(h)
                lam = [lam[l] + alpha * r[l] for l in range(H)]
        r = residuals(h)
        g = [rho * r[l] + lam[l] for l in range(H)]
        gw = [-net.s_in * g[0].T @ x / x.shape[0]]
        gw += [-net.s_mid * g[l].T @ phi(h[l - 1]) / x.shape[0] for l in range(1, H)]
        return gw
    return run


def timeit(fn, device, repeats):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(3):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"workload: N={a.width}, L={a.depth}, B={a.batch}, T=2L={2 * a.depth} steps + "
          "weight-gradient read-out, PC-ALM, ReLU\n")
    # Same maths? The baseline must reproduce ctpc's discrete run before its time means anything.
    cfg64 = config(8, 6, 4, "float64", "discrete")
    with torch.no_grad():
        ours, theirs = ctpc_step(cfg64, devices[0])(), loop_step(cfg64, devices[0])()
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    assert diff < 1e-12, f"per-layer baseline disagrees with ctpc by {diff}"
    print(f"baseline check: per-layer loop equals ctpc discrete to {diff:.1e} (float64)\n")
    print("| device | dtype | ctpc discrete (ms) | ctpc rk4 (ms) | per-layer loop (ms) | "
          "speed-up vs loop |")
    print("|---|---|---|---|---|---|")
    for device in devices:
        for dtype in ("float32", "float64"):
            cfg = config(a.width, a.depth, a.batch, dtype, "discrete")
            t_si = timeit(ctpc_step(cfg, device), device, a.repeats)
            t_rk = timeit(ctpc_step(config(a.width, a.depth, a.batch, dtype, "rk4"), device),
                          device, a.repeats)
            t_loop = timeit(loop_step(cfg, device), device, a.repeats)
            print(f"| {device.type} | {dtype} | {t_si * 1e3:.1f} | {t_rk * 1e3:.1f} | "
                  f"{t_loop * 1e3:.1f} | {t_loop / t_si:.1f}x |")


if __name__ == "__main__":
    main()
