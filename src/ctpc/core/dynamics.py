"""The one right-hand side of PC / PC-ALM (spec section 4), shared by every torch scheme.

State ``S`` is a single tensor ``[P, H, R, B, N]`` holding the neuron populations of R replicas:

    S[POP_H]   = h    activity neurons        tau_h   dh/dt   = -dL/dh
    S[POP_LAM] = lam  multiplier neurons      tau_lam dlam/dt = e
    S[POP_ERR] = e    error neurons (leaky)   tau_e   de/dt   = r - e    (only when tau_e > 0)

With tau_e = 0 the error neurons are instantaneous (e = r) and P = 2. PC is PC-ALM with
1/tau_lam = 0, so lam stays exactly 0.

Everything a step needs besides the state is in one immutable :class:`Params`: weights, batch,
rates and the input drive derived from them. It is built by :meth:`Dynamics.params` and must be
rebuilt whenever the weights change; :meth:`Params.check_current` refuses one whose weights were
modified in place after it was built, so a stale drive cannot survive an optimiser step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

from ctpc.core.network import Network, Residuals, Weights, energy, loss

POP_H, POP_LAM, POP_ERR = 0, 1, 2

# A rate is a python float when every replica shares it (the cheap path: scalar kernels), or a
# tensor [R, 1, 1] that broadcasts against [..., R, B, N] when replicas differ.
Scalar = Union[float, torch.Tensor]


@dataclass(frozen=True)
class Rates:
    """Inverse time constants (1/ms) and the penalty of R replicas.

    k_h = 1/tau_h, k_lam = 1/tau_lambda (0 for PC), k_e = 1/tau_e (0 when tau_e = 0, i.e.
    instantaneous error neurons), rho the penalty."""
    rho: Scalar
    k_h: Scalar
    k_lam: Scalar
    k_e: Scalar

    @staticmethod
    def from_taus(rho, tau_h, tau_lambda, tau_e, device=None, dtype=None) -> "Rates":
        """From per-replica lists (or scalars) of time constants in ms; values shared by every
        replica collapse to python floats."""
        inv = lambda t: 0.0 if math.isinf(t) else 1.0 / t
        k_e = lambda t: 1.0 / t if t > 0 else 0.0
        cols = [_listify(rho), [inv(t) for t in _listify(tau_h)],
                [inv(t) for t in _listify(tau_lambda)], [k_e(t) for t in _listify(tau_e)]]
        return Rates(*(per_replica(c, device, dtype) for c in cols))

    def has_multipliers(self) -> bool:
        return _any_nonzero(self.k_lam)


def _listify(v) -> list[float]:
    return [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]


def per_replica(values: list[float], device=None, dtype=None) -> Scalar:
    """A python float when every replica has the same value, else a tensor [R, 1, 1]."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, device=device, dtype=dtype).view(-1, 1, 1)


def _any_nonzero(v: Scalar) -> bool:
    return bool((v != 0).any()) if isinstance(v, torch.Tensor) else v != 0


@dataclass(frozen=True)
class Params:
    """What one presentation's dynamics depend on besides the state.

    weights: :class:`Weights` of R replicas; x [R, B, D], y [R, B, O]; rates; drive [R, B, N] =
    s_in W_1 x (derived, built with the object); versions: the weights' in-place version counters
    when it was built."""
    weights: Weights
    x: torch.Tensor
    y: torch.Tensor
    rates: Rates
    drive: torch.Tensor
    versions: tuple[int, ...]
    # views of the weights in the layouts the batched products read (aliases, never copies,
    # so they cannot go stale): W_2..W_{L-1} as [(H-1) R, N, N] and its transpose, W_L^T
    w_mid_f: torch.Tensor | None = None
    w_mid_f_t: torch.Tensor | None = None
    w_out_t: torch.Tensor | None = None
    b_mid_f: torch.Tensor | None = None        # b_2..b_{L-1} as [(H-1) R, 1, N], with biases

    def check_current(self) -> None:
        """Raise if a weight tensor was modified in place after these params were built."""
        now = tuple(t._version for t in self.weights.tensors)
        if now != self.versions:
            raise RuntimeError("Params are stale: a weight tensor was modified in place after "
                               "they were built; rebuild them with Dynamics.params(...)")


class Dynamics:
    """The populations' equations for a network structure; every method is a pure function of
    the state ``S`` and the :class:`Params` ``p``."""

    def __init__(self, net: Network, leaky: bool):
        self.net = net
        self.leaky = bool(leaky)

    @property
    def n_pop(self) -> int:
        return 3 if self.leaky else 2

    def params(self, weights: Weights, x: torch.Tensor, y: torch.Tensor, rates: Rates) -> Params:
        """Bundle weights, batch and rates, deriving the input drive from them."""
        if self.leaky != _any_nonzero(rates.k_e):
            raise ValueError("rates.k_e must be non-zero exactly when the error neurons are "
                             "leaky (the state layout depends on it)")
        w_mid_f = weights.w_mid.view(-1, *weights.w_mid.shape[2:])
        b_mid_f = None if weights.b_hid is None else \
            weights.b_hid[1:].view(-1, *weights.b_hid.shape[2:])
        return Params(weights, x, y, rates, self.net.input_drive(weights, x),
                      tuple(t._version for t in weights.tensors), w_mid_f,
                      w_mid_f.transpose(1, 2), weights.w_out.transpose(1, 2), b_mid_f)

    def initial_state(self, p: Params, out: torch.Tensor | None = None) -> torch.Tensor:
        """Feed-forward activities, lam = 0, e = r = 0 (the paper's fresh start per batch),
        [P, H, R, B, N], into ``out`` if given."""
        r, b = p.x.shape[:2]
        if out is None:
            S = torch.zeros(self.n_pop, self.net.n_hidden, r, b, self.net.width,
                            device=p.x.device, dtype=p.x.dtype)
        else:
            S = out.zero_()
        self.net.feedforward(p.weights, p.x, out=S[POP_H])
        return S

    # ---------------------------------------------------------------- pieces of the RHS
    def residuals(self, S: torch.Tensor, p: Params) -> Residuals:
        return self.net.residuals(p.weights, S[POP_H], p.drive)

    def error(self, S: torch.Tensor, resid: Residuals) -> torch.Tensor:
        """What the error neurons report: e (leaky) or r (instantaneous)."""
        return S[POP_ERR] if self.leaky else resid.r

    def credit(self, S: torch.Tensor, resid: Residuals, p: Params,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Composite credit g = rho*e + lam (what drives activity and weight updates), into
        ``out`` if given."""
        rho = p.rates.rho
        if isinstance(rho, torch.Tensor):
            return torch.addcmul(S[POP_LAM], self.error(S, resid), rho, out=out)
        return torch.add(S[POP_LAM], self.error(S, resid), alpha=rho, out=out)

    def activity_gradient(self, S: torch.Tensor, resid: Residuals, p: Params) -> torch.Tensor:
        return self.net.activity_gradient(p.weights, S[POP_H], resid.a, resid.y_hat,
                                          self.credit(S, resid, p), p.y)

    # ---------------------------------------------------------------- full RHS
    def rhs(self, S: torch.Tensor, p: Params) -> torch.Tensor:
        """dS/dt (1/ms)."""
        resid = self.residuals(S, p)
        k = p.rates
        dS = torch.empty_like(S)
        torch.mul(self.activity_gradient(S, resid, p), -k.k_h, out=dS[POP_H])
        torch.mul(self.error(S, resid), k.k_lam, out=dS[POP_LAM])
        if self.leaky:
            torch.mul(resid.r - S[POP_ERR], k.k_e, out=dS[POP_ERR])
        return dS

    # ---------------------------------------------------------------- read-outs
    def energy(self, S: torch.Tensor, resid: Residuals, p: Params):
        """(L_rho [R], l [R]): batch-mean augmented Lagrangian and loss per replica (PC: lam = 0
        gives F)."""
        rho = p.rates.rho
        rho = rho.view(-1) if isinstance(rho, torch.Tensor) else rho
        dims = (0, 2, 3)                                # layers, samples, units
        l = loss(resid.y_hat - p.y)
        lagrangian = energy(l, (S[POP_LAM] * resid.r).sum(dim=dims),
                            resid.r.square().sum(dims), rho, p.x.shape[1])
        return lagrangian, l

    def weight_gradients(self, S: torch.Tensor, resid: Residuals, p: Params) -> Weights:
        """dL_rho/dW at the current state: the local (credit x presynaptic rate) read-out."""
        return self.net.weight_gradients(resid.a, resid.y_hat, self.credit(S, resid, p),
                                         p.x, p.y)


def extremes_into(S: torch.Tensor, out: torch.Tensor) -> None:
    """(min, max) of S per replica into ``out`` [2, R]: one reduction pass for one replica,
    no temporary, no new tensor (the divergence check runs after every step)."""
    if S.shape[2] == 1:
        torch.aminmax(S.view(-1), out=(out[0, 0], out[1, 0]))
    else:
        torch.amin(S, dim=(0, 1, 3, 4), out=out[0])
        torch.amax(S, dim=(0, 1, 3, 4), out=out[1])


def peak(S: torch.Tensor) -> torch.Tensor:
    """[R] max |S| per replica (NaN propagates, so a non-finite state fails the bound). One
    reduction pass without a temporary for one replica (half the cost of |S| then its max)."""
    if S.shape[2] == 1:
        lo, hi = torch.aminmax(S.view(-1))
        return torch.maximum(hi, -lo).view(1)
    return S.abs().amax(dim=(0, 1, 3, 4))
