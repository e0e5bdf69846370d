"""Count the torch operators and the copies one inference step launches (the discrete
algorithm, PC-ALM, ReLU, float32, R = 1), with torch's profiler: what docs/benchmarks.md calls
"ops per step" (the operators the step calls itself) and "copies per step" (every aten::copy_,
also those inside other operators: a clone, a dtype conversion, baddbmm copying its input).

    python sims/count_ops.py [--ctpc PATH]      # PATH: another checkout to count (e.g. an old
                                                # commit), else this one
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

CELLS = [(32, 32, 64, 64), (128, 32, 64, 64), (8, 8, 16, 64), (32, 128, 256, 64)]


def count(n, l, b, steps=8):
    from torch.profiler import ProfilerActivity, profile

    import ctpc
    cfg = ctpc.load_config({
        "dtype": "float32", "device": "cpu",
        "network": {"width": n, "depth": l, "activation": "relu", "input_dim": 784,
                    "output_dim": 10},
        "data": {"source": "synthetic", "batch_size": b},
        "dynamics": {"method": "pcalm", "state_lr": 0.25, "alpha": 1.0},
        "integrator": {"scheme": "discrete", "dt": 1.0, "budget": steps}})
    step = _stepper(cfg)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops, copies = Counter(), 0
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        top = e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")
        if top:                          # an operator the step itself calls
            ops[e.name] += 1
        if e.name == "aten::copy_":      # data moved, also inside other operators
            copies += 1
    total = sum(ops.values()) / steps
    copies /= steps
    return total, copies, {k: v / steps for k, v in ops.most_common(12)}


def _stepper(cfg):
    """One step of the checkout's own Gauss-Seidel solver (the API changed over time)."""
    import torch
    try:                                    # this checkout
        from ctpc.core.solvers import make_solver
        from ctpc.build.objects import build_model
        m = build_model(cfg)
        p = m.params()
        import inspect
        if "dt" in inspect.signature(make_solver).parameters:   # dt bound in the solver
            solver = make_solver(m.dyn, "discrete", m.dt)
            carry = solver.init(m.dyn.initial_state(p), p)
            return lambda: torch.no_grad()(solver.step)(carry, p)
        solver = make_solver(m.dyn, "discrete")                 # dt given to every step
        carry = solver.init(m.dyn.initial_state(p), p)
        return lambda: torch.no_grad()(solver.step)(carry, p, m.dt)
    except ImportError:                     # the first release (ctpc 0.1.0)
        from ctpc.sim.backends.torch_backend import build
        from ctpc.core.solvers import make_solver
        net, dyn = build(cfg)
        solver = make_solver("discrete", dyn, 1.0)
        state = {"c": solver.init(dyn.initial_state())}

        def step():
            with torch.no_grad():
                state["c"] = solver.step(state["c"])
        return step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ctpc", help="path of another ctpc checkout to count")
    a = p.parse_args()
    if a.ctpc:
        sys.path.insert(0, a.ctpc)
    import ctpc
    print(f"ctpc {ctpc.__version__} from {ctpc.__file__}")
    print("| cell (N, L, T, B) | ops per step | copies per step | most frequent |")
    print("|---|---|---|---|")
    for n, l, t, b in CELLS:
        total, copies, top = count(n, l, b)
        top_s = ", ".join(f"{k[6:]} {v:g}" for k, v in list(top.items())[:6])
        print(f"| {n}, {l}, {t}, {b} | {total:g} | {copies:g} | {top_s} |")


if __name__ == "__main__":
    main()
