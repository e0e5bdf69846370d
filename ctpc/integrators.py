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


class GSCarry:
    """The Gauss-Seidel carry: the state and the network pass at its activities, in buffers
    that :meth:`GaussSeidel.step` updates in place (no allocation per step).

    S [P, H, R, B, N]; r [H, R, B, N] residuals; a = phi(h); out_err = y_hat - y [R, B, O];
    scratch buffers for the credit, the back-projected credit (also the predictions of the
    network pass) and the output feedback."""

    def __init__(self, S: torch.Tensor, r: torch.Tensor, a: torch.Tensor, out_err: torch.Tensor,
                 y: torch.Tensor):
        self.S, self.r, self.a, self.out_err, self.y = S, r, a, out_err, y
        self.g = torch.empty_like(r)
        self.back = torch.empty_like(r[1:])
        self.fb_out = torch.empty_like(r[-1])
        self.mask = None

    @property
    def resid(self) -> Residuals:
        """The network pass at S as a :class:`~ctpc.network.Residuals` (views, plus y_hat)."""
        return Residuals(self.r, self.out_err + self.y, self.a)

    def clone(self) -> "GSCarry":
        return GSCarry(self.S.clone(), self.r.clone(), self.a.clone(), self.out_err.clone(),
                       self.y)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


@dataclass(frozen=True)
class GaussSeidel:
    """Primal (activity) step(s), then the dual (error, multiplier) update with new residuals.

    The residual computed for the dual update is exactly the one the next primal step needs,
    so it is carried over: one network pass per primal step. The step updates its carry in
    place (buffer donation: the caller must not keep a carry it has passed in; take
    :meth:`snapshot` first), which leaves ~15 kernels and no allocation per primal step:

        g = lam + rho e;  back = g[1:] W (batched);  h -= c_h (g - g[1:] - s_mid phi' back)
        h_H -= c_h s_out phi'(h_H) (y_hat - y) W_L;  a = phi(h);  r = h - pred(h);  lam += c r
    """
    dyn: Dynamics
    dt: Scalar
    info: SchemeInfo
    inner_steps: int = 1
    final_dual: bool = True

    def init(self, S: torch.Tensor, p: Params) -> GSCarry:
        """A carry of its own (S is copied): the caller's tensor is never modified."""
        p.check_current()
        S = S.clone()
        resid = self.dyn.residuals(S, p)
        return GSCarry(S, resid.r, resid.a, resid.y_hat - p.y, p.y)

    def state(self, carry: GSCarry) -> torch.Tensor:
        return carry.S

    def snapshot(self, carry: GSCarry) -> GSCarry:
        return carry.clone()

    def step(self, carry: GSCarry, p: Params, last: bool = False) -> GSCarry:
        dyn, k = self.dyn, p.rates
        for _ in range(self.inner_steps):
            self._primal(carry, p, self.dt * k.k_h)
            self._network_pass(carry, p)
        if self.final_dual or not last:
            S = carry.S
            if dyn.leaky:                                   # e += c_e (r - e)
                c_e = self.dt * k.k_e
                axpy_(S[POP_ERR], S[POP_ERR], -c_e)
                axpy_(S[POP_ERR], carry.r, c_e)
            if _nonzero(k.k_lam):                           # lam += c_lam e
                axpy_(S[POP_LAM], S[POP_ERR] if dyn.leaky else carry.r, self.dt * k.k_lam)
        return carry

    def _primal(self, c: GSCarry, p: Params, c_h: Scalar) -> None:
        """h -= c_h dL/dh (spec section 2), in place, from the carried network pass."""
        net, w = self.dyn.net, p.weights
        S, g = c.S, c.g
        h, lam = S[POP_H], S[POP_LAM]
        err = S[POP_ERR] if self.dyn.leaky else c.r
        rho = p.rates.rho
        if isinstance(rho, torch.Tensor):
            torch.addcmul(lam, err, rho, out=g)             # g = lam + rho e
        else:
            torch.add(lam, err, alpha=rho, out=g)
        d = self._slope(c, h)
        torch.bmm(c.out_err, w.w_out, out=c.fb_out)         # (y_hat - y) W_L
        if d is not None:
            c.fb_out.mul_(d[-1])
        axpy_(h, g, -c_h)                                   # h -= c_h g
        axpy_(h[-1], c.fb_out, -c_h * net.s_out)            # output term on the top layer
        if net.n_hidden > 1:
            back = c.back
            torch.bmm(_flat(g[1:]), _flat(w.w_mid), out=_flat(back))   # g_{l+1} W_{l+1}
            axpy_(h[:-1], g[1:], c_h)                       # + c_h J^T g: identity part
            if d is None:
                axpy_(h[:-1], back, c_h * net.s_mid)
            elif isinstance(c_h, torch.Tensor):
                h[:-1].addcmul_(back, d[:-1] * (c_h * net.s_mid))
            else:
                h[:-1].addcmul_(back, d[:-1], value=c_h * net.s_mid)

    def _slope(self, c: GSCarry, h: torch.Tensor):
        """phi'(h) (a mask for relu, None for linear) into a reused buffer."""
        act = self.dyn.net.activation
        if act == "linear":
            return None
        if c.mask is None:
            c.mask = torch.empty(h.shape, device=h.device,
                                 dtype=torch.bool if act == "relu" else h.dtype)
        if act == "relu":
            return torch.gt(h, 0, out=c.mask)
        return torch.addcmul(torch.ones((), device=h.device, dtype=h.dtype), c.a, c.a,
                             value=-1, out=c.mask)        # 1 - tanh(h)^2

    def _network_pass(self, c: GSCarry, p: Params) -> None:
        """a = phi(h), r = h - pred(h), y_hat - y: in place, one batched product per pass."""
        net, w = self.dyn.net, p.weights
        h = c.S[POP_H]
        if net.activation == "relu":
            torch.clamp(h, min=0, out=c.a)
        elif net.activation == "tanh":
            torch.tanh(h, out=c.a)
        else:
            c.a.copy_(h)
        torch.sub(h[0], p.drive, out=c.r[0])
        if net.n_hidden > 1:
            # pred = h + s_mid a W^T by the same kernel as the feed-forward pass, so a layer the
            # credit has not reached keeps r = 0 exactly (not round-off noise)
            torch.baddbmm(_flat(h[:-1]), _flat(c.a[:-1]), _flat(w.w_mid).transpose(1, 2),
                          alpha=net.s_mid, out=_flat(c.back))
            torch.sub(h[1:], c.back, out=c.r[1:])
        torch.baddbmm(p.y, c.a[-1], w.w_out.transpose(1, 2), beta=-1, alpha=net.s_out,
                      out=c.out_err)


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
