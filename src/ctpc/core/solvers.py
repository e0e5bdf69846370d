"""Choosing a solver: :func:`make_solver`, the one place that turns a scheme name (and noise,
a conduction delay, compilation) into a :class:`ctpc.core.integrators.Solver`.

It sits above the solver modules it chooses from: :mod:`ctpc.core.integrators` (the
deterministic schemes), :mod:`ctpc.core.noise` (their stochastic forms, built on those) and
:mod:`ctpc.core.delay` (the delay equations).
"""
from __future__ import annotations

from ctpc.common.schemes import scheme as scheme_info
from ctpc.core.delay import DelayedSolver
from ctpc.core.dynamics import Dynamics
from ctpc.core.integrators import ExplicitRK, GaussSeidel, Solver
from ctpc.core.noise import noisy_solver


def make_solver(dyn: Dynamics, scheme: str, *, inner_steps: int = 1,
                weight_credit_timing: str = "pre_dual", compile: bool = False,
                noise=None, delay_steps: int = 0) -> Solver:
    """The solver of ``scheme`` (a name of :data:`ctpc.common.schemes.SCHEMES`); the step size
    is given to each step. ``compile``: torch.compile chunks of Gauss-Seidel steps
    (:meth:`GaussSeidel.advance`; explicit RK schemes run eagerly). ``noise``: a
    :class:`ctpc.core.noise.Noise` (None: deterministic) gives the scheme's stochastic form
    (:func:`ctpc.core.noise.noisy_solver`; eager, never compiled). ``delay_steps``: the
    conduction delay in steps (:func:`ctpc.config.schema.delay_steps`); k >= 1 gives the
    scheme on the delay equations (:class:`ctpc.core.delay.DelayedSolver`; eager, never
    compiled), 0 the solvers above, unchanged."""
    if delay_steps:
        if noise is not None:
            raise ValueError("noise and conduction delays together are not built")
        info = scheme_info(scheme)
        return DelayedSolver(dyn, info, int(delay_steps),
                             inner_steps if info.name == "discrete" else 1,
                             final_dual=info.name != "discrete"
                             or weight_credit_timing == "post_dual")
    if noise is not None:
        return noisy_solver(make_solver(dyn, scheme, inner_steps=inner_steps,
                                        weight_credit_timing=weight_credit_timing), noise)
    info = scheme_info(scheme)
    if not info.gauss_seidel:
        return ExplicitRK(dyn, info)
    if info.name == "discrete":
        return GaussSeidel(dyn, info, inner_steps,
                           final_dual=weight_credit_timing == "post_dual", compile=compile)
    return GaussSeidel(dyn, info, compile=compile)
