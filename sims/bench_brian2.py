"""Benchmark the same simulation on torch CPU and on Brian2 (numpy / cython / cpp_standalone,
dense Synapses or the network_operation coupling): run time and peak memory.

Workload: PC-ALM, tanh, float64, explicit Euler (the scheme both backends run step for step),
digits batch of B samples, width N, depth L, ``--steps`` steps, no traces (per-layer summaries
at the first and last step only), so the integration dominates.

Every configuration runs in its own subprocess, single-threaded (OMP_NUM_THREADS=1, Brian2's
targets are single-threaded too), and reports its simulate wall time and its peak RSS (the
process itself or, for cpp_standalone, the compiled binary it runs, whichever is larger). "Run
time" is the whole ``ctpc.simulate`` call (network construction, run, read-out); "of which
Brian2 run" is ``Network.run`` (runtime targets, code-object set-up included) or the compiled
binary alone (cpp_standalone).
Compiled targets run twice: the first run builds into a fresh build directory (its whole
process time is reported as "cold build"; cython: a 1-step run, as its code does not depend on
the run length), the second is timed warm. The final energy of every variant is compared with
torch's as a check that all of them simulated the same thing.

    python sims/bench_brian2.py            # N = 64, 256 x L = 8, 16, 1000 steps (~15 min)
    python sims/bench_brian2.py --quick    # N = 64, L = 8, 100 steps (~2 min, cold builds)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

VARIANTS = {
    # name: (backend, target, construction)
    "torch": ("torch", "numpy", "synapses"),
    "brian2 numpy": ("brian2", "numpy", "synapses"),
    "brian2 numpy + net_op": ("brian2", "numpy", "network_operation"),
    "brian2 cython": ("brian2", "cython", "synapses"),
    "brian2 cython + net_op": ("brian2", "cython", "network_operation"),
    "brian2 cpp_standalone": ("brian2", "cpp_standalone", "synapses"),
}


def config(width, depth, batch, steps, variant, build_dir):
    backend, target, construction = VARIANTS[variant]
    return {
        "name": f"bench_N{width}_L{depth}", "dtype": "float64", "device": "cpu",
        "backend": backend,
        "network": {"width": width, "depth": depth, "activation": "tanh"},
        "data": {"source": "digits", "batch_size": batch},
        "dynamics": {"method": "pcalm", "tau_h": 4.0, "tau_lambda": 1.0},
        "integrator": {"scheme": "euler", "dt": 0.25, "steps": steps},
        "record": {"every": steps, "variables": []},
        "brian2": {"target": target, "construction": construction, "build_dir": build_dir},
    }


def child(spec: str) -> None:
    """One measured simulation; prints a JSON line."""
    import torch
    torch.set_num_threads(1)
    import ctpc
    cfg = json.loads(spec)
    # import everything (torch, Brian2, scikit-learn's digits) outside the timed run
    ctpc.simulate({**cfg, "backend": "torch", "integrator": {**cfg["integrator"], "steps": 1},
                   "network": {**cfg["network"], "depth": 2, "width": 2}})
    if cfg["backend"] == "brian2":
        import brian2  # noqa: F401
    ds = ctpc.simulate(cfg)
    kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
             resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"wall_s": ds.attrs["wall_time_s"], "peak_mb": kb / 1024,
                      "brian2_run_s": ds.attrs.get("brian2_run_s"),
                      "energy": float(ds.energy.isel(time=-1)), "status": ds.attrs["status"]}))


def measure(cfg: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:120]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 64, L = 8, 100 steps")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    p.add_argument("--depths", type=int, nargs="+", default=[8, 16])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    p.add_argument("--build-dir", help="Brian2 build directory (default: a fresh temporary "
                                       "one, so the cold column really is cold)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    if args.quick:
        args.widths, args.depths, args.steps = [64], [8], 100
    build_dir = args.build_dir or tempfile.mkdtemp(prefix="ctpc-bench-brian2-")
    started = time.perf_counter()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, Python "
          f"{platform.python_version()}, B = {args.batch}, {args.steps} steps, float64, euler, "
          f"build dir {build_dir}", flush=True)
    rows = []
    try:
        for width in args.widths:
            for depth in args.depths:
                ref = None
                for variant in args.variants:
                    cfg = config(width, depth, args.batch, args.steps, variant, build_dir)
                    cold = None
                    target = VARIANTS[variant][1]
                    if target != "numpy":
                        # builds into the fresh directory; cython's code does not depend on
                        # the run length (one step builds it all), a standalone project does
                        steps = 1 if target == "cython" else args.steps
                        cold = measure({**cfg, "integrator": {**cfg["integrator"],
                                                              "steps": steps}}, args.timeout)
                    res = measure(cfg, args.timeout)
                    if variant == "torch" and "energy" in res:
                        ref = res["energy"]
                    rows.append((width, depth, variant, res, cold, ref))
                    print(row_text(*rows[-1]), flush=True)
    finally:
        if not args.build_dir:
            shutil.rmtree(build_dir, ignore_errors=True)
    print(f"\n# total {time.perf_counter() - started:.0f} s, load at the end "
          f"{os.getloadavg()[0]:.1f}\n")
    print(table(rows))


def row_text(width, depth, variant, res, cold, ref) -> str:
    return f"N={width} L={depth} {variant}: {json.dumps(res)} cold={json.dumps(cold)}"


def table(rows) -> str:
    lines = ["| N | L | variant | run time (s) | of which Brian2 run (s) | peak RSS (MB) | "
             "cold build, whole process (s) | final energy vs torch |",
             "|---|---|---|---|---|---|---|---|"]
    for width, depth, variant, res, cold, ref in rows:
        if "error" in res:
            lines.append(f"| {width} | {depth} | {variant} | {res['error']} | | | | |")
            continue
        b2_run = "" if res.get("brian2_run_s") is None else f"{res['brian2_run_s']:.2f}"
        cold_txt = "" if cold is None else (cold.get("error") or f"{cold['process_s']:.0f}")
        agree = "" if ref is None or variant == "torch" else \
            f"{abs(res['energy'] - ref) / abs(ref):.0e}"
        lines.append(f"| {width} | {depth} | {variant} | {res['wall_s']:.2f} | {b2_run} | "
                     f"{res['peak_mb']:.0f} | {cold_txt} | {agree} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
