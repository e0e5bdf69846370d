"""Conduction delays between adjacent layers (``dynamics.delay``, guide: biology): the PC /
PC-ALM flow as a delay differential equation, and its solvers.

Semantics. Every connection between adjacent layers delays what it carries by d = k dt (k =
:func:`ctpc.config.schema.delay_steps`, a whole number of steps >= 1), both the predictions
going up and the credit going down. Error and multiplier neurons sit with their layer and are
local (no delay). With h_l(t) the activity of hidden layer l and g_l = rho e_l + lam_l its
credit:

    r_1(t)   = h_1(t) - s_in W_1 x                                   (constant input drive)
    r_l(t)   = h_l(t) - [h_{l-1}(t-d) + s_mid W_l phi(h_{l-1}(t-d))]  l = 2 .. H
    y_hat(t) = s_out W_L phi(h_H(t-d)) (+ b_L)
    tau_h dh_l/dt = -g_l(t) + g_{l+1}(t-d) + s_mid phi'(h_l(t)) W_{l+1}^T g_{l+1}(t-d)   l < H
    tau_h dh_H/dt = -g_H(t) - s_out phi'(h_H(t)) W_L^T (y_hat - y)(t-d)
    tau_lam dlam_l/dt = e_l(t),  tau_e de_l/dt = r_l(t) - e_l(t)       (local)

so the output loop (h_H up to the output, its error back) is a round trip of 2d. The gate
phi'(h_l(t)) is the receiving layer's own, current slope. History before t = 0 is constant:
the initial state (:meth:`DelayedSolver.start`: feed-forward activities, lam = 0, e = 0, for
all t <= 0), i.e. the layers behave as if they had sat at the feed-forward point forever.
Delay 0 is not this module: ``make_solver(..., delay_steps=0)`` returns today's solvers, bit
for bit.

What is stored. What each layer *sends*, per past step, in a ring buffer of k + 1 slots that
lives in the carry (preallocated at :meth:`DelayedSolver.start` / ``init``): its activity h_l
(upward; the receiving layer applies phi to it), its credit g_l (downward) and the output error
y_hat - y (down to the top layer). At step n the buffer holds steps n-k .. n-1; step n writes
its own values into the spare slot before its later stages read, so Heun's second stage (at
t + dt, which needs the buffer at t + dt - d, i.e. step n+1-k: stored, the current step itself
when k = 1) and every Gauss-Seidel network pass find what they need. RK4's half-step stages need
the buffer at t + dt/2 - d, between two stored steps: they take the *linear interpolation* of
the two (the mean), which keeps the step a linear map of the augmented state (so
:mod:`ctpc.studies.delay`'s spectral analysis applies) but makes RK4's delayed terms second
order in dt, not fourth. The delayed look-ups are all at t_n + c_i dt - d for the tableau's
nodes c_i, which is the method of steps.

Gauss-Seidel (semi_implicit, discrete): at step n the primal update uses the delayed credit and
output error of step n-k (the same for every inner step), the network passes after it use the
delayed activities of step n+1-k (the time the new activities belong to), then the dual update
as without delays.

Read-outs. The state S of a carry is the current state; :meth:`DelayedSolver.residuals` is the
network pass the error neurons see now (residuals against the *delayed* predictions, y_hat the
delayed output). The weight read-out built on it (credit x presynaptic rate) pairs the current
credit g_l(t) with the current rate phi(h_{l-1}(t)) -- the synapse's local view at one instant,
not the rate that produced the prediction (which left d earlier).

Limitations. Steps allocate their temporaries (the buffer itself is written in place); the
per-layer and per-replica work is batched, no Python loop over layers or replicas runs per
step. When :func:`ctpc.core.engine.integrate` freezes a diverged replica,
:meth:`DelayedSolver.with_state` keeps the other replicas' history, so each replica of a
stacked run is its own run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ctpc.common.schemes import SchemeInfo
from ctpc.core.dynamics import POP_ERR, POP_H, POP_LAM, Dynamics, Params, Scalar
from ctpc.core.network import Residuals, dphi, layer_prediction, output_error, phi


class DelayCarry:
    """State plus history of a delayed network.

    S [P, H, R, B, N] (the current state); hist_h, hist_g [k+1, H, R, B, N] and hist_o
    [k+1, R, B, O]: what each layer sent at past steps (activity, credit, output error y_hat -
    y), step m in slot m mod (k+1); n: the number of steps taken (python int); y the target."""

    def __init__(self, S, hist_h, hist_g, hist_o, n: int, y):
        self.S, self.hist_h, self.hist_g, self.hist_o, self.n, self.y = \
            S, hist_h, hist_g, hist_o, n, y

    @property
    def k(self) -> int:
        return self.hist_h.shape[0] - 1

    def slot(self, m: int) -> int:
        return m % (self.k + 1)

    def sent(self, m: int):
        """(h, g, y_hat - y) sent at step m (views into the buffer)."""
        s = self.slot(m)
        return self.hist_h[s], self.hist_g[s], self.hist_o[s]

    def sent_at(self, t: float):
        """What was sent at (possibly fractional) step t: the stored values, or the linear
        interpolation between the two steps around t (RK4's half-step stages)."""
        lo = int(t // 1)
        frac = t - lo
        if frac == 0:
            return self.sent(lo)
        a, b = self.sent(lo), self.sent(lo + 1)
        return tuple(torch.lerp(x, y, frac) for x, y in zip(a, b))

    def clone(self) -> "DelayCarry":
        return DelayCarry(self.S.clone(), self.hist_h.clone(), self.hist_g.clone(),
                          self.hist_o.clone(), self.n, self.y)

    # The canonical augmented state: S and the sent values at lags 1 .. k (what the next step
    # reads). Used by the stability analysis (ctpc.studies.delay).
    def lags(self):
        """(h, g, o) at lags 1 .. k, each stacked lag-major: [k, H, R, B, N], [k, R, B, O]."""
        idx = [self.slot(self.n - j) for j in range(1, self.k + 1)]
        return self.hist_h[idx], self.hist_g[idx], self.hist_o[idx]

    @staticmethod
    def from_lags(S, lag_h, lag_g, lag_o, y) -> "DelayCarry":
        """A carry at step 0 whose lags 1 .. k hold lag_h, lag_g, lag_o ([k, ...] lag-major)."""
        k = lag_h.shape[0]
        hist_h = torch.empty((k + 1, *lag_h.shape[1:]), dtype=lag_h.dtype, device=lag_h.device)
        hist_g, hist_o = torch.empty_like(hist_h), lag_o.new_empty((k + 1, *lag_o.shape[1:]))
        c = DelayCarry(S, hist_h, hist_g, hist_o, 0, y)
        idx = [c.slot(-j) for j in range(1, k + 1)]
        hist_h[idx], hist_g[idx], hist_o[idx] = lag_h, lag_g, lag_o
        return c


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


@dataclass(frozen=True)
class DelayedSolver:
    """A scheme of :mod:`ctpc.core.integrators` on the delayed dynamics (module docstring),
    behind the same :class:`~ctpc.core.integrators.Solver` Protocol. ``k`` >= 1: the delay in
    steps. ``in_place = True``: a step writes the new state and history into the carry it is
    given (take :meth:`snapshot`, a copy of state and buffer, to keep one)."""
    dyn: Dynamics
    info: SchemeInfo
    k: int
    inner_steps: int = 1
    final_dual: bool = True
    in_place: ClassVar[bool] = True

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("DelayedSolver needs a delay of at least one step; delay 0 is "
                             "the undelayed solvers (make_solver(..., delay_steps=0))")

    # ------------------------------------------------------------------ the pieces
    def network_pass(self, S: torch.Tensor, h_del: torch.Tensor, p: Params):
        """(r [H, R, B, N], y_hat - y [R, B, O]) at activities S[POP_H] against predictions
        from the delayed activities h_del [H, R, B, N]."""
        net, h = self.dyn.net, S[POP_H]
        r = torch.empty_like(h)
        torch.sub(h[0], p.drive, out=r[0])
        if net.n_hidden > 1:
            pred = layer_prediction(_flat(h_del[:-1]), _flat(phi(net.activation, h_del[:-1])),
                                    p.w_mid_f_t, net.s_mid, p.b_mid_f)
            torch.sub(h[1:], pred.view_as(h[1:]), out=r[1:])
        oe = output_error(phi(net.activation, h_del[-1]), p.w_out_t, p.y, net.s_out,
                          p.weights.b_out)
        return r, oe

    def credit(self, S: torch.Tensor, r: torch.Tensor, p: Params) -> torch.Tensor:
        """g = lam + rho e (e = r for instantaneous error neurons): what a layer sends down."""
        err = S[POP_ERR] if self.dyn.leaky else r
        return S[POP_LAM] + p.rates.rho * err

    def gradient(self, S: torch.Tensor, g: torch.Tensor, g_del: torch.Tensor,
                 oe_del: torch.Tensor, p: Params) -> torch.Tensor:
        """dL/dh with the credit from above delayed: g - J^T(h(t)) g_del (layers < H) and the
        delayed output error on the top layer, [H, R, B, N]."""
        net, h = self.dyn.net, S[POP_H]
        d = dphi(net.activation, h, phi(net.activation, h))
        grad = g.clone()
        if net.n_hidden > 1:
            back = torch.bmm(_flat(g_del[1:]), p.w_mid_f).view_as(g_del[1:])
            if d is not None:
                back = back * d[:-1]
            grad[:-1] -= g_del[1:] + net.s_mid * back
        fb = torch.bmm(oe_del, p.weights.w_out)
        grad[-1] += net.s_out * (fb if d is None else fb * d[-1])
        return grad

    def rhs(self, S: torch.Tensor, g: torch.Tensor, r: torch.Tensor, g_del, oe_del,
            p: Params) -> torch.Tensor:
        """dS/dt (1/ms) from the state, its credit g and residual r and the delayed inputs."""
        k = p.rates
        dS = torch.empty_like(S)
        torch.mul(self.gradient(S, g, g_del, oe_del, p), -k.k_h, out=dS[POP_H])
        err = S[POP_ERR] if self.dyn.leaky else r
        torch.mul(err, k.k_lam, out=dS[POP_LAM])
        if self.dyn.leaky:
            torch.mul(r - S[POP_ERR], k.k_e, out=dS[POP_ERR])
        return dS

    # ------------------------------------------------------------------ the Protocol
    def init(self, S: torch.Tensor, p: Params) -> DelayCarry:
        """A carry at state S (copied) with constant history: every past step sent what S
        sends with its own activities as the delayed ones."""
        p.check_current()
        S = S.clone()
        r, oe = self.network_pass(S, S[POP_H], p)
        g = self.credit(S, r, p)
        rep = lambda t: t.unsqueeze(0).repeat(self.k + 1, *([1] * t.dim()))
        return DelayCarry(S, rep(S[POP_H]), rep(g), rep(oe), 0, p.y)

    def start(self, p: Params, reuse: DelayCarry | None = None) -> DelayCarry:
        """The carry of a fresh presentation: feed-forward state, lam = 0, e = 0, and that
        state as the constant history before t = 0 (``reuse`` is not recycled)."""
        return self.init(self.dyn.initial_state(p), p)

    def state(self, carry: DelayCarry) -> torch.Tensor:
        return carry.S

    def residuals(self, carry: DelayCarry, p: Params) -> Residuals:
        """The network pass the error neurons see now: residuals against the delayed
        predictions, y_hat the delayed output, a = phi(h) the current rates."""
        r, oe = self.network_pass(carry.S, carry.sent(carry.n - self.k)[0], p)
        return Residuals(r, oe + p.y, phi(self.dyn.net.activation, carry.S[POP_H]))

    def snapshot(self, carry: DelayCarry) -> DelayCarry:
        """A copy of state and history."""
        return carry.clone()

    def with_state(self, carry: DelayCarry, S: torch.Tensor, p: Params, reset=()) -> DelayCarry:
        """``carry`` at state S, in place: the replicas in ``reset`` (the engine's newly frozen
        ones) get a constant history at S, as :meth:`init` gives (their stored history may hold
        the diverged values, and 0 x inf is NaN even at dt = 0); the others keep theirs."""
        fresh = self.init(S, p)
        carry.S.copy_(fresh.S)
        for r in reset:
            r = int(r)
            carry.hist_h[:, :, r].copy_(fresh.hist_h[:, :, r])
            carry.hist_g[:, :, r].copy_(fresh.hist_g[:, :, r])
            carry.hist_o[:, r].copy_(fresh.hist_o[:, r])
        return carry

    def advance(self, carry: DelayCarry, p: Params, dt: Scalar, n: int,
                last: bool) -> DelayCarry:
        for j in range(n):
            carry = self.step(carry, p, dt, last=last and j + 1 == n)
        return carry

    def step(self, c: DelayCarry, p: Params, dt: Scalar, last: bool = False) -> DelayCarry:
        """One step of size dt, in place in ``c`` (returned)."""
        n, k = c.n, self.k
        h_del, g_del, oe_del = c.sent(n - k)
        r, oe = self.network_pass(c.S, h_del, p)
        g = self.credit(c.S, r, p)
        s = c.slot(n)                   # the spare slot: step n - k - 1, no longer needed
        c.hist_h[s].copy_(c.S[POP_H])
        c.hist_g[s].copy_(g)
        c.hist_o[s].copy_(oe)
        if self.info.gauss_seidel:
            self._gauss_seidel(c, p, dt, last, r, g, g_del, oe_del)
        else:
            self._runge_kutta(c, p, dt, r, g, g_del, oe_del)
        c.n = n + 1
        return c

    def _runge_kutta(self, c, p, dt, r, g, g_del, oe_del) -> None:
        """y + dt sum_i b_i k_i; stage i at t_n + c_i dt reads the history at step
        n - k + c_i (interpolated when c_i is fractional)."""
        tab, y = self.info.tableau, c.S
        ks = [self.rhs(y, g, r, g_del, oe_del, p)]
        for row in tab.a:
            ci = float(sum(row))
            Y = y.clone()
            for coeff, kk in zip(row, ks):
                if coeff:
                    Y = Y + (dt * coeff) * kk
            h_d, g_d, o_d = c.sent_at(c.n - self.k + ci)
            r_i, _ = self.network_pass(Y, h_d, p)
            ks.append(self.rhs(Y, self.credit(Y, r_i, p), r_i, g_d, o_d, p))
        new = y.clone()
        for coeff, kk in zip(tab.b, ks):
            if coeff:
                new = new + (dt * coeff) * kk
        c.S.copy_(new)

    def _gauss_seidel(self, c, p, dt, last, r, g, g_del, oe_del) -> None:
        """Primal step(s) with the delayed credit of step n-k, network passes against the
        delayed activities of step n+1-k, then the dual update with the new residual."""
        k = p.rates
        S = c.S
        h_next_del = c.sent(c.n + 1 - self.k)[0]
        for i in range(self.inner_steps):
            if i:
                g = self.credit(S, r, p)
            S[POP_H] -= (dt * k.k_h) * self.gradient(S, g, g_del, oe_del, p)
            r, _ = self.network_pass(S, h_next_del, p)
        if self.final_dual or not last:
            if self.dyn.leaky:
                S[POP_ERR] += (dt * k.k_e) * (r - S[POP_ERR])
            err = S[POP_ERR] if self.dyn.leaky else r
            S[POP_LAM] += (dt * k.k_lam) * err
