"""Time-stepping schemes over :class:`ctpc.core.dynamics.Dynamics`.

Two families (facts in :mod:`ctpc.common.schemes`), one written interface in the spirit of
diffrax's solvers, :class:`Solver`:

    solver = make_solver(dyn, "rk4")                  # ctpc.core.solvers
    carry = solver.init(S, params)                    # per presentation (S is not modified)
    carry = solver.step(carry, params, dt)            # one step of size dt; consumes carry
    carry = solver.advance(carry, params, dt, n, last)   # n steps, nothing observed between
    S = solver.state(carry)

A solver holds no step size: ``dt`` is an argument of every step. Carries are owned by the
solver: ``step`` and ``advance`` *consume* the carry they are given and return the next one;
whether they do it by returning new tensors or by updating the given carry's buffers is
declared once per solver class, as data, by ``in_place``:

* ``in_place = False`` (:class:`ExplicitRK`): pure; a step never modifies its input carry, so
  an older carry stays valid; :meth:`~Solver.snapshot` returns the carry itself.
* ``in_place = True`` (:class:`GaussSeidel`, and the continuous-plasticity solver
  :class:`ctpc.training.plasticity.PlasticGaussSeidel`): a step writes the new state into the
  carry it is given (buffer donation: no allocation per step). The caller must not keep a
  reference to a carry it has passed in, nor to tensors taken from it (``state(carry)``): they
  hold the new values. To keep a carry, take :meth:`~Solver.snapshot` (a copy) first.

* :class:`ExplicitRK` - any explicit Runge-Kutta tableau over the full RHS: ``euler`` (Jacobi:
  every population sees the old state), ``heun``, ``rk4``.
* :class:`GaussSeidel` - activity first, then error and multiplier neurons with the *new*
  residual (spec section 4). ``semi_implicit`` is one such sweep per step; ``discrete`` is the
  paper's algorithm (spec section 3): ``inner_steps`` primal steps per dual step, and a final
  step that is primal only (``pre_dual``) or primal + dual (``post_dual``). With
  ``eta_h = dt/tau_h``, ``alpha = dt/tau_lam`` one semi-implicit step is one paper iteration.

``dt`` (ms) is a python float, or a tensor [R, 1, 1] when replicas step differently; a replica
whose ``dt`` is 0 does not move (that is how a diverged replica is frozen). Each call may pass
another ``dt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from ctpc.core.dynamics import POP_ERR, POP_H, POP_LAM, Dynamics, Params, Scalar
from ctpc.core import compiled as compiled_programs
from ctpc.core.network import Residuals, layer_prediction, output_error
from ctpc.common.schemes import SchemeInfo


Carry = Any     # a solver's own type: a tensor, a tuple of tensors, a GSCarry, ...


class Solver(Protocol):
    """What :func:`ctpc.core.engine.integrate` runs: every scheme implements all of it (some
    methods trivially), so callers never feature-test a solver.

    ``carry`` arguments are consumed (see the module docstring): use only the returned carry.
    ``p``: :class:`~ctpc.core.dynamics.Params`; ``dt``: the step (ms), a python float or a
    [R, 1, 1] tensor, read on every call; ``last``: the step is the run's last (the paper's
    final primal-only step, ``weight_credit_timing: pre_dual``)."""

    in_place: ClassVar[bool]
    """Whether step/advance update the carry given to them in place (True) or are pure."""

    def init(self, S: torch.Tensor, p: Params) -> Carry:
        """A carry at state S [P, H, R, B, N] (S itself is never modified)."""

    def start(self, p: Params, reuse: Carry | None = None) -> Carry:
        """The carry of a fresh presentation (feed-forward state, lam = 0, e = 0); ``reuse``: a
        carry of this solver whose buffers may be recycled (it is consumed)."""

    def step(self, carry: Carry, p: Params, dt: Scalar, last: bool = False) -> Carry:
        """One step of size ``dt`` from ``carry`` (consumed)."""

    def advance(self, carry: Carry, p: Params, dt: Scalar, n: int, last: bool) -> Carry:
        """``n`` steps of size ``dt`` (the run's last among them if ``last``), nothing observed
        between them: the same numbers as ``n`` calls of :meth:`step`, possibly computed
        another way (compiled)."""

    def snapshot(self, carry: Carry) -> Carry:
        """A carry that later steps of ``carry`` do not change (a copy if ``in_place``)."""

    def with_state(self, carry: Carry, S: torch.Tensor, p: Params, reset) -> Carry:
        """``carry`` (consumed) moved to state S [P, H, R, B, N] (not modified): what the engine
        does when it freezes diverged replicas. The replicas in ``reset`` (indices) start
        afresh at S; the others keep what the solver carries besides the state (a noise clock,
        a delay's history, plastic weights)."""

    def state(self, carry: Carry) -> torch.Tensor:
        """The state S [P, H, R, B, N] of ``carry`` (a view into it when ``in_place``)."""

    def residuals(self, carry: Carry, p: Params) -> Residuals:
        """The network pass at the carry's state."""


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
    """Explicit Runge-Kutta step of a Butcher tableau; the carry is the state itself. Pure
    (``in_place = False``): a step returns new tensors and never modifies its input.

    ``rhs(y, p)`` defaults to ``dyn.rhs`` on the neuron state S; a caller may integrate a larger
    system with the same tableau by giving its own ``rhs`` over a tuple of tensors whose first
    entry is S (continuous plasticity integrates (S, W_in, W_mid, W_out) this way)."""
    dyn: Dynamics
    info: SchemeInfo
    rhs: object = None
    in_place: ClassVar[bool] = False

    def init(self, y, p: Params):
        p.check_current()
        return y

    def start(self, p: Params, reuse=None):
        """The carry of a fresh presentation: the feed-forward state, lam = 0 (``reuse`` is
        for solvers with buffers to recycle; an RK carry is just the state)."""
        return self.init(self.dyn.initial_state(p), p)

    def state(self, carry) -> torch.Tensor:
        return carry[0] if isinstance(carry, tuple) else carry

    def residuals(self, carry, p: Params) -> Residuals:
        """The network pass at the carry's state (computed: RK carries only the state)."""
        return self.dyn.residuals(self.state(carry), p)

    def snapshot(self, carry):
        """The carry itself: steps never modify it."""
        return carry

    def with_state(self, carry, S: torch.Tensor, p: Params, reset=()):
        """A carry at S (the carry is the state: nothing else to keep)."""
        return self.init(S, p)

    def step(self, y, p: Params, dt: Scalar, last: bool = False):
        """y + dt sum_i b_i k_i (new tensors; ``y`` is not modified; ``last`` is unused)."""
        rhs = self.rhs or self.dyn.rhs
        tab = self.info.tableau
        ks = [rhs(y, p)]
        for row in tab.a:
            ks.append(rhs(_lincomb(y, ks, row, dt), p))
        return _lincomb(y, ks, tab.b, dt)

    def advance(self, y, p: Params, dt: Scalar, n: int, last: bool):
        """``n`` calls of :meth:`step` (explicit RK schemes run eagerly)."""
        for _ in range(n):
            y = self.step(y, p, dt)
        return y


class GSCarry:
    """The Gauss-Seidel carry: the state and the network pass at its activities, in buffers
    that :meth:`GaussSeidel.step` and :meth:`GaussSeidel.advance` update in place (no
    allocation per step; ``S``, ``h``, ``lam``, ... are views of those buffers).

    S [P, H, R, B, N]; r [H, R, B, N] residuals; a = phi(h); out_err = y_hat - y [R, B, O];
    scratch buffers for the credit g, the back-projected credit (also the predictions of the
    network pass), the output feedback and phi'(h). Every slice the step reads is made once,
    here, so a step spends its time in kernels, not in building views."""

    def __init__(self, S: torch.Tensor, r: torch.Tensor, a: torch.Tensor, out_err: torch.Tensor,
                 y: torch.Tensor, leaky: bool):
        self.S, self.r, self.a, self.out_err, self.y, self.leaky = S, r, a, out_err, y, leaky
        self.g = torch.empty_like(r)
        self.back = torch.empty_like(r[1:])
        self.fb_out = torch.empty_like(r[-1])
        self.slope = torch.empty_like(r)            # phi'(h) (relu: 0/1 as a float mask)
        self.h, self.lam = S[POP_H], S[POP_LAM]
        self.err = S[POP_ERR] if leaky else r       # what the error neurons report
        self.h_lo, self.h_hi, self.h_top = self.h[:-1], self.h[1:], self.h[-1]
        self.h_lo_f, self.a_lo_f = _flat(self.h_lo), _flat(a[:-1])
        self.g_hi, self.g_hi_f = self.g[1:], _flat(self.g[1:])
        self.back_f, self.r_hi = _flat(self.back), r[1:]
        self.slope_lo, self.slope_top = self.slope[:-1], self.slope[-1]
        self.h0, self.r0, self.a_top = self.h[0], r[0], a[-1]

    @property
    def resid(self) -> Residuals:
        """The network pass at S as a :class:`~ctpc.core.network.Residuals` (views, plus y_hat)."""
        return Residuals(self.r, self.out_err + self.y, self.a)

    def clone(self) -> "GSCarry":
        return GSCarry(self.S.clone(), self.r.clone(), self.a.clone(), self.out_err.clone(),
                       self.y, self.leaky)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


@dataclass(frozen=True)
class GaussSeidel:
    """Primal (activity) step(s), then the dual (error, multiplier) update with new residuals.

    The residual computed for the dual update is exactly the one the next primal step needs,
    so it is carried over: one network pass per primal step. ``in_place = True``: :meth:`step`
    and :meth:`advance` write the new state and network pass into the buffers of the
    :class:`GSCarry` they are given and return that same object (buffer donation: the caller
    must not keep a carry it has passed in, or its ``state``; take :meth:`snapshot` first),
    which leaves ~15 kernels and no allocation per primal step:

        g = lam + rho e;  back = g[1:] W (batched);  h -= c_h (g - g[1:] - s_mid phi' back)
        h_H -= c_h s_out phi'(h_H) (y_hat - y) W_L;  a = phi(h);  r = h - pred(h);  lam += c r
    """
    dyn: Dynamics
    info: SchemeInfo
    inner_steps: int = 1
    final_dual: bool = True
    compile: bool = False
    in_place: ClassVar[bool] = True

    def advance(self, c: GSCarry, p: Params, dt: Scalar, n: int, last: bool) -> GSCarry:
        """``n`` steps of size ``dt`` (the last of the run if ``last``) with nothing observed
        between them, in place in ``c`` (returned). With ``compile`` (instantaneous errors),
        the n steps are ``torch.compile``d programs (:func:`ctpc.core.compiled.steps`) whose
        results are copied into c's buffers: the elementwise work of a step fuses into a few
        loops around the batched products (see docs/benchmarks.md for when that pays off)."""
        if self.compile and not c.leaky:
            return _compiled_advance(self, c, p, dt, n, last)
        for j in range(n):
            self.step(c, p, dt, last=last and j + 1 == n)
        return c

    def init(self, S: torch.Tensor, p: Params) -> GSCarry:
        """A carry of its own (S is copied): the caller's tensor is never modified."""
        p.check_current()
        c = self._empty_carry(S.clone(), p)
        self._network_pass(c, p)
        return c

    def start(self, p: Params, reuse: GSCarry | None = None) -> GSCarry:
        """The carry of a fresh presentation (feed-forward state, lam = 0, e = 0), in the
        buffers of ``reuse`` when they fit (a training loop recycles them batch after batch:
        no allocation per update), else new ones. Same numbers either way."""
        p.check_current()
        S = reuse.S if _fits(reuse, p) else None
        c = reuse if S is not None else self._empty_carry(None, p)
        self.dyn.initial_state(p, out=c.S)
        c.y = p.y
        self._network_pass(c, p)
        return c

    def _empty_carry(self, S: torch.Tensor | None, p: Params) -> GSCarry:
        if S is None:
            R, B = p.x.shape[:2]
            net = self.dyn.net
            S = torch.empty(self.dyn.n_pop, net.n_hidden, R, B, net.width, device=p.x.device,
                            dtype=p.x.dtype)
        return GSCarry(S, torch.empty_like(S[POP_H]), torch.empty_like(S[POP_H]),
                       torch.empty_like(p.y), p.y, self.dyn.leaky)

    def state(self, carry: GSCarry) -> torch.Tensor:
        return carry.S

    def residuals(self, carry: GSCarry, p: Params) -> Residuals:
        """The network pass at the carry's state: carried, not recomputed."""
        return carry.resid

    def snapshot(self, carry: GSCarry) -> GSCarry:
        """A copy of the carry's buffers (later steps of ``carry`` leave it unchanged)."""
        return carry.clone()

    def with_state(self, carry: GSCarry, S: torch.Tensor, p: Params, reset=()) -> GSCarry:
        """A carry at S, its network pass recomputed (state and pass are all it holds)."""
        return self.init(S, p)

    def step(self, c: GSCarry, p: Params, dt: Scalar, last: bool = False) -> GSCarry:
        """One step of size ``dt``, in place: writes the new S and network pass into ``c``'s
        buffers and returns ``c`` itself."""
        k = p.rates
        c_h = dt * k.k_h
        for _ in range(self.inner_steps):
            self._primal(c, p, c_h)
            self._network_pass(c, p)
        if self.final_dual or not last:
            if c.leaky:                                     # e += c_e (r - e)
                c_e = dt * k.k_e
                axpy_(c.err, c.err, -c_e)
                axpy_(c.err, c.r, c_e)
            if _nonzero(k.k_lam):                           # lam += c_lam e
                axpy_(c.lam, c.err, dt * k.k_lam)
        return c

    def _primal(self, c: GSCarry, p: Params, c_h: Scalar) -> None:
        """h -= c_h dL/dh (spec section 2), in place, from the carried network pass."""
        net = self.dyn.net
        rho = p.rates.rho
        if isinstance(rho, torch.Tensor):
            torch.addcmul(c.lam, c.err, rho, out=c.g)       # g = lam + rho e
        else:
            torch.add(c.lam, c.err, alpha=rho, out=c.g)
        slope = self._slope(c)
        torch.bmm(c.out_err, p.weights.w_out, out=c.fb_out)  # (y_hat - y) W_L
        if slope:
            c.fb_out.mul_(c.slope_top)
        axpy_(c.h, c.g, -c_h)                               # h -= c_h g
        axpy_(c.h_top, c.fb_out, -c_h * net.s_out)          # output term on the top layer
        if net.n_hidden > 1:
            torch.bmm(c.g_hi_f, p.w_mid_f, out=c.back_f)    # g_{l+1} W_{l+1}, all layers
            axpy_(c.h_lo, c.g_hi, c_h)                      # + c_h J^T g: identity part
            if not slope:
                axpy_(c.h_lo, c.back, c_h * net.s_mid)
            elif isinstance(c_h, torch.Tensor):
                c.h_lo.addcmul_(c.back, c.slope_lo * (c_h * net.s_mid))
            else:
                c.h_lo.addcmul_(c.back, c.slope_lo, value=c_h * net.s_mid)

    def _slope(self, c: GSCarry) -> bool:
        """phi'(h) into c.slope; False for linear (phi' = 1 is skipped)."""
        act = self.dyn.net.activation
        if act == "relu":
            torch.gt(c.h, 0, out=c.slope)
        elif act == "tanh":
            torch.mul(c.a, c.a, out=c.slope)
            c.slope.neg_().add_(1.0)                       # 1 - tanh(h)^2
        return act != "linear"

    def _network_pass(self, c: GSCarry, p: Params) -> None:
        """a = phi(h), r = h - pred(h), y_hat - y: in place, one batched product per pass."""
        net = self.dyn.net
        if net.activation == "relu":
            torch.clamp(c.h, min=0, out=c.a)
        elif net.activation == "tanh":
            torch.tanh(c.h, out=c.a)
        else:
            c.a.copy_(c.h)
        torch.sub(c.h0, p.drive, out=c.r0)
        if net.n_hidden > 1:
            # pred = h + s_mid a W^T by the same kernel as the feed-forward pass, so a layer the
            # credit has not reached keeps r = 0 exactly (not round-off noise)
            layer_prediction(c.h_lo_f, c.a_lo_f, p.w_mid_f_t, net.s_mid, p.b_mid_f, out=c.back_f)
            torch.sub(c.h_hi, c.back, out=c.r_hi)
        output_error(c.a_top, p.w_out_t, p.y, net.s_out, p.weights.b_out, out=c.out_err)


def _compiled_advance(solver: "GaussSeidel", c: GSCarry, p: Params, dt: Scalar, n: int,
                      last: bool) -> GSCarry:
    """n steps by the compiled pure form of the step (:func:`ctpc.core.compiled.steps`; as
    :func:`ctpc.core.compiled.pieces` splits them), written back into the carry's buffers."""
    net = solver.dyn.net
    fn = compiled_programs.compiled("steps_batch_layout", c.h.device.type,
                                    compiled_programs.is_small(net.width, c.out_err.shape[-1]))
    as_t = lambda v: torch.as_tensor(v, device=c.h.device, dtype=c.h.dtype)
    k = p.rates
    rates = as_t(k.rho), as_t(dt * k.k_h), as_t(dt * k.k_lam)
    out = (c.h, c.lam, c.r, c.a, c.out_err)
    programs = compiled_programs.pieces(n)      # long runs in chunks: compile time independent of n
    for i, m in enumerate(programs, start=1):
        out = fn(*out, p.drive, p.y, p.weights.w_mid, p.weights.w_out, *rates,
                 b_hid=p.weights.b_hid, b_out=p.weights.b_out, s_mid=net.s_mid,
                 s_out=net.s_out, activation=net.activation, n_steps=m,
                 inner_steps=solver.inner_steps,
                 dual_after_last=i < len(programs) or not last or solver.final_dual)
    for buf, new in zip((c.h, c.lam, c.r, c.a, c.out_err), out):
        buf.copy_(new)
    return c


def _fits(c: GSCarry | None, p: Params) -> bool:
    """Whether carry ``c`` has the buffers a presentation with params ``p`` needs."""
    return (c is not None and c.S.shape[2:4] == p.x.shape[:2] and c.out_err.shape == p.y.shape
            and c.S.dtype == p.x.dtype and c.S.device == p.x.device)


def _nonzero(c: Scalar) -> bool:
    return isinstance(c, torch.Tensor) or c != 0
