"""Time-stepping schemes over :class:`ctpc.dynamics.Dynamics`.

Two families, one interface (``init`` / ``step`` / ``state``), in the spirit of diffrax:

* :class:`ExplicitRK` - any explicit Runge-Kutta tableau over the full RHS: ``euler`` (Jacobi:
  every population sees the old state), ``heun``, ``rk4``.
* :class:`GaussSeidel` - activity first, then error and multiplier neurons with the *new*
  residual (spec section 4). ``semi_implicit`` is one such sweep per step; ``discrete`` is the
  paper's algorithm (spec section 3): ``inner_steps`` primal steps per dual step, and a final
  step that is primal only (``pre_dual``) or primal + dual (``post_dual``). With
  ``eta_h = dt/tau_h``, ``alpha = dt/tau_lam`` one semi-implicit step is one paper iteration.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dynamics import ERR, H, LAM, Dynamics
from .network import Residuals

TABLEAUS = {
    # (a rows, b, order)
    "euler": ([], [1.0], 1),
    "heun": ([[1.0]], [0.5, 0.5], 2),
    "rk4": ([[0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], 4),
}


class ExplicitRK:
    """Explicit Runge-Kutta step of a Butcher tableau; the carry is the state itself."""

    def __init__(self, dyn: Dynamics, dt: float, scheme: str):
        self.dyn, self.dt = dyn, dt
        self.a, self.b, self.order = TABLEAUS[scheme]

    def init(self, S: torch.Tensor) -> torch.Tensor:
        return S

    def state(self, carry: torch.Tensor) -> torch.Tensor:
        return carry

    def step(self, S: torch.Tensor, last: bool = False) -> torch.Tensor:
        ks = [self.dyn.rhs(S)]
        for row in self.a:
            stage = S.clone()
            for coeff, k in zip(row, ks):
                if coeff:
                    stage.add_(k, alpha=self.dt * coeff)
            ks.append(self.dyn.rhs(stage))
        out = S.clone()
        for coeff, k in zip(self.b, ks):
            out.add_(k, alpha=self.dt * coeff)
        return out


@dataclass
class GSCarry:
    S: torch.Tensor
    res: Residuals   # residuals at S's activities, reused by the next primal step


class GaussSeidel:
    """Primal (activity) step(s), then the dual (error, multiplier) update with new residuals.

    The residual computed for the dual update is exactly the one the next primal step needs,
    so it is carried over: one network pass per primal step.
    """

    def __init__(self, dyn: Dynamics, dt: float, inner_steps: int = 1,
                 final_dual: bool = True):
        self.dyn, self.dt = dyn, dt
        self.inner_steps = inner_steps
        self.final_dual = final_dual

    def init(self, S: torch.Tensor) -> GSCarry:
        return GSCarry(S, self.dyn.residuals(S))

    def state(self, carry: GSCarry) -> torch.Tensor:
        return carry.S

    def step(self, carry: GSCarry, last: bool = False) -> GSCarry:
        dyn, dt = self.dyn, self.dt
        S, res = carry.S.clone(), carry.res
        for _ in range(self.inner_steps):
            S[H].sub_(dyn.activity_gradient(S, res), alpha=dt * dyn.k_h)
            res = dyn.residuals(S)
        if self.final_dual or not last:
            if dyn.leaky:
                S[ERR].add_(res.r - S[ERR], alpha=dt * dyn.k_e)
            if dyn.k_lam:
                S[LAM].add_(dyn.error(S, res), alpha=dt * dyn.k_lam)
        return GSCarry(S, res)


def make_solver(scheme: str, dyn: Dynamics, dt: float, *, inner_steps: int = 1,
                weight_credit_timing: str = "pre_dual"):
    if scheme in TABLEAUS:
        return ExplicitRK(dyn, dt, scheme)
    if scheme == "semi_implicit":
        return GaussSeidel(dyn, dt)
    if scheme == "discrete":
        return GaussSeidel(dyn, dt, inner_steps, final_dual=weight_credit_timing == "post_dual")
    raise ValueError(f"unknown integrator.scheme {scheme!r}")
