"""Time-stepping schemes over :class:`ctpc.dynamics.Dynamics`.

Two families (facts in :mod:`ctpc.schemes`), one small interface in the spirit of diffrax:

    solver = make_solver(dyn, "rk4", dt)
    carry = solver.init(S, params)          # per presentation
    carry = solver.step(carry, params)      # pure: returns a new carry, never mutates its input
    S = solver.state(carry)

* :class:`ExplicitRK` - any explicit Runge-Kutta tableau over the full RHS: ``euler`` (Jacobi:
  every population sees the old state), ``heun``, ``rk4``.
* :class:`GaussSeidel` - activity first, then error and multiplier neurons with the *new*
  residual (spec section 4). ``semi_implicit`` is one such sweep per step; ``discrete`` is the
  paper's algorithm (spec section 3): ``inner_steps`` primal steps per dual step, and a final
  step that is primal only (``pre_dual``) or primal + dual (``post_dual``). With
  ``eta_h = dt/tau_h``, ``alpha = dt/tau_lam`` one semi-implicit step is one paper iteration.

``dt`` (ms) is a python float, or a tensor [R, 1, 1] when replicas step differently; a replica
whose ``dt`` is 0 does not move (that is how a diverged replica is frozen).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .dynamics import POP_ERR, POP_H, POP_LAM, Dynamics, Params, Scalar
from .network import Residuals
from .schemes import SchemeInfo, scheme as scheme_info


def axpy_(y: torch.Tensor, x: torch.Tensor, c: Scalar) -> torch.Tensor:
    """y += c * x in place, for a python-float or broadcastable-tensor c."""
    if isinstance(c, torch.Tensor):
        return y.addcmul_(x, c)
    return y.add_(x, alpha=c)


def _lincomb(y, ks, coeffs, dt):
    """y + dt sum_i coeffs[i] ks[i], for a tensor or a tuple of tensors (a new object)."""
    if isinstance(y, tuple):
        return tuple(_lincomb(c, [k[i] for k in ks], coeffs, dt) for i, c in enumerate(y))
    out = y.clone()
    for coeff, k in zip(coeffs, ks):
        if coeff:
            axpy_(out, k, dt * coeff)
    return out


@dataclass(frozen=True)
class ExplicitRK:
    """Explicit Runge-Kutta step of a Butcher tableau; the carry is the state itself.

    ``rhs(y, p)`` defaults to ``dyn.rhs`` on the neuron state S; a caller may integrate a larger
    system with the same tableau by giving its own ``rhs`` over a tuple of tensors whose first
    entry is S (continuous plasticity integrates (S, W_in, W_mid, W_out) this way)."""
    dyn: Dynamics
    dt: Scalar
    info: SchemeInfo
    rhs: object = None

    def init(self, y, p: Params):
        p.check_current()
        return y

    def state(self, carry) -> torch.Tensor:
        return carry[0] if isinstance(carry, tuple) else carry

    def step(self, y, p: Params, last: bool = False):
        rhs = self.rhs or self.dyn.rhs
        tab, dt = self.info.tableau, self.dt
        ks = [rhs(y, p)]
        for row in tab.a:
            ks.append(rhs(_lincomb(y, ks, row, dt), p))
        return _lincomb(y, ks, tab.b, dt)


@dataclass(frozen=True)
class GSCarry:
    S: torch.Tensor
    resid: Residuals   # residuals at S's activities, reused by the next primal step


@dataclass(frozen=True)
class GaussSeidel:
    """Primal (activity) step(s), then the dual (error, multiplier) update with new residuals.

    The residual computed for the dual update is exactly the one the next primal step needs,
    so it is carried over: one network pass per primal step.
    """
    dyn: Dynamics
    dt: Scalar
    info: SchemeInfo
    inner_steps: int = 1
    final_dual: bool = True

    def init(self, S: torch.Tensor, p: Params) -> GSCarry:
        p.check_current()
        return GSCarry(S, self.dyn.residuals(S, p))

    def state(self, carry: GSCarry) -> torch.Tensor:
        return carry.S

    def step(self, carry: GSCarry, p: Params, last: bool = False) -> GSCarry:
        dyn, dt, k = self.dyn, self.dt, p.rates
        S, resid = carry.S.clone(), carry.resid
        c_h = dt * k.k_h
        for _ in range(self.inner_steps):
            axpy_(S[POP_H], dyn.activity_gradient(S, resid, p), -c_h)
            resid = dyn.residuals(S, p)
        if self.final_dual or not last:
            if dyn.leaky:
                axpy_(S[POP_ERR], resid.r - S[POP_ERR], dt * k.k_e)
            if _nonzero(k.k_lam):
                axpy_(S[POP_LAM], dyn.error(S, resid), dt * k.k_lam)
        return GSCarry(S, resid)


def _nonzero(c: Scalar) -> bool:
    return isinstance(c, torch.Tensor) or c != 0


def make_solver(dyn: Dynamics, scheme: str, dt: Scalar, *, inner_steps: int = 1,
                weight_credit_timing: str = "pre_dual", compile: bool = False):
    """The solver of ``scheme`` (a name of :data:`ctpc.schemes.SCHEMES`) with step ``dt`` (ms)."""
    info = scheme_info(scheme)
    if not info.gauss_seidel:
        return ExplicitRK(dyn, dt, info)
    if info.name == "discrete":
        return GaussSeidel(dyn, dt, info, inner_steps,
                           final_dual=weight_credit_timing == "post_dual")
    return GaussSeidel(dyn, dt, info)


def with_dt(solver, dt: Scalar):
    """The same solver with another step (e.g. 0 for frozen replicas)."""
    return dataclasses.replace(solver, dt=dt)
