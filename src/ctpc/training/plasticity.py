"""Continuous plasticity: tau_W dW/dt = -dL_rho/dW integrated with the neurons (spec section 4).

During each presentation the weights move together with the activity, error and multiplier
neurons, with the configured scheme, instead of one optimiser step per batch:

* explicit RK schemes (euler, heun, rk4) integrate the joint system (S, W) with the scheme's own
  tableau (:class:`ctpc.core.integrators.ExplicitRK` with a joint right-hand side);
* Gauss-Seidel schemes (semi_implicit, discrete) add the weights as the last block of the sweep:
  activity, then error and multiplier neurons, then W from the read-out at the new state
  (the credit x presynaptic rate of that state, with the weights of the start of the step).

Between presentations the neurons restart (h feed-forward, lambda = 0) and the weights keep
their values. The weight step of one integration step is dt/tau_W times the read-out.

Both solvers implement :class:`ctpc.core.integrators.Solver` (dt given to every step);
:class:`PlasticGaussSeidel` is ``in_place`` (it steps its neuron carry in place),
:class:`PlasticRK` is pure. The weight tensors of a carry are never modified: each step makes
new ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from ctpc.core.dynamics import Dynamics, Params, Scalar
from ctpc.core.integrators import ExplicitRK, GaussSeidel, axpy_
from ctpc.core.network import Residuals
from ctpc.core.network import Weights


def _weights_of(y) -> Weights:
    return Weights(*y[1:])


@dataclass(frozen=True)
class PlasticGaussSeidel:
    """A Gauss-Seidel solver whose carry is (neuron carry, weights). ``in_place``: a step
    updates the neuron carry it is given in place (:meth:`GaussSeidel.step`) before returning
    a new carry; the caller must not keep a carry it has passed in (take :meth:`snapshot`)."""
    base: GaussSeidel
    tau_w: float
    in_place: ClassVar[bool] = True

    def init(self, S: torch.Tensor, p: Params):
        """(a neuron carry at S, the weights of ``p``); S is copied, not modified."""
        return self.base.init(S, p), p.weights

    def start(self, p: Params, reuse=None):
        """The carry of a fresh presentation with the weights of ``p`` (nothing recycled)."""
        return self.init(self.base.dyn.initial_state(p), p)

    def state(self, carry) -> torch.Tensor:
        return self.base.state(carry[0])

    def residuals(self, carry, p: Params) -> Residuals:
        """The network pass at the carry's state and weights (carried, not recomputed)."""
        return self.base.residuals(carry[0], p)

    def snapshot(self, carry):
        """A copy of the neuron carry, with the (never modified) weights."""
        return self.base.snapshot(carry[0]), carry[1]

    def with_state(self, carry, S: torch.Tensor, p: Params, reset=()):
        """A carry at S with the carry's weights (each replica keeps what it has learnt; a
        frozen replica's, dt = 0, no longer change)."""
        w = carry[1]
        return self.base.init(S, self.base.dyn.params(w, p.x, p.y, p.rates)), w

    def step(self, carry, p: Params, dt: Scalar, last: bool = False):
        """One step of size ``dt``: the neurons in place in ``carry[0]``, then the weights
        (new tensors); returns a new carry at the new weights."""
        inner, w = carry
        dyn = self.base.dyn
        pw = dyn.params(w, p.x, p.y, p.rates)
        inner = self.base.step(inner, pw, dt, last)
        S = self.base.state(inner)
        grads = dyn.weight_gradients(S, inner.resid, pw)
        c = dt * (-1.0 / self.tau_w)
        w = w.like(axpy_(t.clone(), g, c) for t, g in zip(w.tensors, grads.tensors))
        # the next primal step needs the residuals of the NEW weights
        return self.base.init(S, dyn.params(w, p.x, p.y, p.rates)), w

    def advance(self, carry, p: Params, dt: Scalar, n: int, last: bool):
        """``n`` calls of :meth:`step` (always eager)."""
        for j in range(n):
            carry = self.step(carry, p, dt, last=last and j + 1 == n)
        return carry


def plastic_rk(base: ExplicitRK, tau_w: float) -> ExplicitRK:
    """The RK solver of ``base`` over the joint state (S, W_in, W_mid, W_out)."""
    dyn: Dynamics = base.dyn
    k_w = -1.0 / tau_w

    def rhs(y, p: Params):
        S, w = y[0], _weights_of(y)
        pw = dyn.params(w, p.x, p.y, p.rates)
        dS = dyn.rhs(S, pw)
        grads = dyn.weight_gradients(S, dyn.residuals(S, pw), pw)
        return (dS, *(g.mul_(k_w) for g in grads.tensors))
    return dataclasses.replace(base, rhs=rhs)


class PlasticRK:
    """Adapter giving the joint RK solver the (init from S, carry) interface; the carry is
    (S, W_in, W_mid, W_out). Pure, as :class:`ExplicitRK`."""
    in_place: ClassVar[bool] = False

    def __init__(self, base: ExplicitRK, tau_w: float):
        self.solver = plastic_rk(base, tau_w)

    def init(self, S: torch.Tensor, p: Params):
        return self.solver.init((S, *p.weights.tensors), p)

    def start(self, p: Params, reuse=None):
        """The carry of a fresh presentation with the weights of ``p``."""
        return self.init(self.solver.dyn.initial_state(p), p)

    def state(self, carry) -> torch.Tensor:
        return carry[0]

    def residuals(self, carry, p: Params) -> Residuals:
        """The network pass at the carry's state and weights (computed)."""
        dyn = self.solver.dyn
        return dyn.residuals(carry[0], dyn.params(_weights_of(carry), p.x, p.y, p.rates))

    def snapshot(self, carry):
        return carry

    def with_state(self, carry, S: torch.Tensor, p: Params, reset=()):
        """A carry at S with the carry's weights (see :meth:`PlasticGaussSeidel.with_state`)."""
        return (S.clone(), *carry[1:])

    def step(self, carry, p: Params, dt: Scalar, last: bool = False):
        return self.solver.step(carry, p, dt, last)

    def advance(self, carry, p: Params, dt: Scalar, n: int, last: bool):
        return self.solver.advance(carry, p, dt, n, last)


def plastic_solver(base, tau_w: float):
    """Wrap a neuron solver so the weights are integrated with the neurons."""
    if isinstance(base, GaussSeidel):
        return PlasticGaussSeidel(base, tau_w)
    return PlasticRK(base, tau_w)


def final_weights(solver, carry) -> Weights:
    """The weights at the end of a plastic presentation."""
    if isinstance(solver, PlasticGaussSeidel):
        return carry[1]
    return _weights_of(carry)
