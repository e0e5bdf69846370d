"""The PyTorch backend: integrate the stacked ODEs on CPU or CUDA, detect divergence, record.

``run(cfg)`` is one network; ``run_replicas(cfgs)`` runs configs that share every shape as
replicas of one tensor program and returns one result per config.
"""
from __future__ import annotations

import time
import warnings

import torch
from tqdm.auto import tqdm

from ctpc.config.schema import Config, delay_steps
from ctpc.core.engine import divergence_bounds, divergence_reason, integrate
from ctpc.core.solvers import make_solver
from ctpc.build.objects import build_model
from ctpc.sim.recording import Recorder, plan_recording
from ctpc.core.reference import bp_reference
from ctpc.results.run_result import RunResult


def run(cfg: Config, progress: bool = True, stream=None) -> RunResult:
    """One run; ``stream``: a :class:`ctpc.results.stream.RecordStream` that receives the records chunk
    by chunk (long runs), else they are kept in memory."""
    return run_replicas([cfg], progress, stream)[0]


def run_replicas(cfgs: list[Config], progress: bool = True, stream=None) -> list[RunResult]:
    t0 = time.perf_counter()
    first = cfgs[0]
    plan = plan_recording(first)            # refuses oversized traces before any work
    model = build_model(cfgs)
    it = first.integrator
    if it.compile:
        warnings.warn("integrator.compile: true is used by training (python -m ctpc.train); "
                      "a simulation observes the steps it records and runs them eagerly",
                      stacklevel=2)
    solver = make_solver(model.dyn, it.scheme, inner_steps=it.inner_steps,
                         weight_credit_timing=it.weight_credit_timing,
                         delay_steps=delay_steps(first),     # 0: the undelayed solvers
                         noise=model.noise)                  # None: deterministic
    p = model.params()
    bp = bp_reference(model.net, model.weights, model.x, model.y)
    rec = Recorder(model.dyn, plan, bp, model.replicas, stream=stream)
    n = it.n_steps
    with torch.no_grad(), tqdm(total=n, desc=f"{first.name or 'ctpc'} {it.scheme}",
                               unit="step", disable=not progress, leave=False) as bar:
        carry = solver.start(p)
        S0 = solver.state(carry)
        rec.record(0, S0, p, solver.residuals(carry, p))
        out = integrate(solver, carry, p, n, dt=model.dt, check_every=it.check_every,
                        bound=divergence_bounds(S0, it.divergence_bound, it.growth_bound),
                        observe=lambda step, slv, c: rec.maybe_record(
                            step, slv.state(c), p, lambda: slv.residuals(c, p)),
                        progress=bar.update)
        return rec.results(out.final_state(), p, out.steps_completed, out.diverged_step,
                           dt=[c.integrator.dt for c in cfgs], backend="torch",
                           device=str(model.net.device), t0=t0,
                           residuals=lambda: solver.residuals(out.carry, p),
                           reasons=[divergence_reason(v, it.divergence_bound)
                                    for v in out.peak_at_divergence])
