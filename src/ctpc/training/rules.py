"""Learning rules: what one update computes from the current weights and a batch.

Every rule returns the weight gradient (loss-gradient sign, :class:`~ctpc.core.network.Weights`
layout, R replicas) and the per-update statistics the training dataset keeps. They reuse the
simulator's own pieces: BP is autograd through :func:`ctpc.core.reference.forward_layers`; PC and
PC-ALM run the configured solver through :func:`ctpc.core.engine.integrate` from the feed-forward
state with lambda = 0 (fresh for every batch, spec section 7) and read the weight gradient out
locally at the end of the budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ctpc.core.dynamics import POP_LAM, Dynamics, Rates, Scalar
from ctpc.core.engine import integrate
from ctpc.core.integrators import Solver
from ctpc.core.compiled import is_small, run_presentation
from ctpc.core.network import Network, Weights, rms_norm
from ctpc.core.reference import forward_layers, mse_loss
from ctpc.training.plasticity import final_weights


@dataclass
class UpdateStats:
    """Per-update statistics of R replicas (device tensors; no host sync)."""
    loss: torch.Tensor                   # [R] l at the feed-forward point, before the update
    energy: torch.Tensor | None = None   # [R] L_rho at the end of inference
    res_norm: torch.Tensor | None = None      # [H, R] at the end of inference
    lam_norm: torch.Tensor | None = None      # [H, R]
    credit_norm: torch.Tensor | None = None   # [H, R]


class BPRule:
    """The exact gradient of the MSE loss, by autograd through the same network."""
    method = "bp"
    plastic = False

    def __init__(self, net: Network):
        self.net = net

    def __call__(self, w: Weights, x: torch.Tensor, y: torch.Tensor):
        with torch.enable_grad():
            leaves = w.map(lambda t: t.detach().requires_grad_())
            _, y_hat = forward_layers(self.net, leaves, x)
            loss = mse_loss(y_hat, y)
            # replicas are independent: the gradient of the sum is each replica's gradient
            grads = torch.autograd.grad(loss.sum(), leaves.tensors, allow_unused=True)
        grads = w.like(torch.zeros_like(t) if g is None else g for g, t in zip(grads, w.tensors))
        return grads, UpdateStats(loss.detach())


class InferenceRule:
    """PC / PC-ALM: ``n_steps`` steps of size ``dt`` (ms; a float or [R, 1, 1]) of ``solver``
    from the feed-forward state, then the local read-out dL_rho/dW at the final state (the
    solver's weight-credit timing applies)."""
    plastic = False

    def __init__(self, dyn: Dynamics, solver: Solver, n_steps: int, rates: Rates, method: str,
                 *, dt: Scalar, noisy: bool = False):
        self.dyn, self.solver, self.n_steps, self.rates = dyn, solver, n_steps, rates
        self.method, self.dt = method, dt
        # a noisy solver (ctpc.core.noise) is put on the noise stream of each presentation
        self.noisy = noisy
        self._carry = None    # the last presentation's carry: its buffers are recycled

    def infer(self, w: Weights, x: torch.Tensor, y: torch.Tensor, stream=None):
        """(final state S, its residuals, params, feed-forward loss [R]). The returned tensors
        live in recycled buffers: use them before the next call. ``stream``: the noise stream
        of this presentation (:func:`ctpc.core.noise.update_stream`; None: the solver's own,
        the simulation stream; ignored without noise)."""
        dyn = self.dyn
        p = dyn.params(w, x, y, self.rates)
        solver = self.solver.on_stream(stream) if self.noisy and stream is not None \
            else self.solver
        carry = solver.start(p, reuse=self._carry)
        loss0 = mse_loss(solver.residuals(carry, p).y_hat, y)
        # No divergence check here: training finds non-finite values at its own sync points.
        out = integrate(solver, carry, p, self.n_steps, dt=self.dt, check_every=None)
        self._carry = out.carry
        return out.final_state(), out.solver.residuals(out.carry, p), p, loss0

    def __call__(self, w: Weights, x: torch.Tensor, y: torch.Tensor, stream=None):
        S, resid, p, loss0 = self.infer(w, x, y, stream)
        dyn = self.dyn
        credit = dyn.credit(S, resid, p)
        grads = dyn.net.weight_gradients(resid.a, resid.y_hat, credit, p.x, p.y)
        energy, _ = dyn.energy(S, resid, p)
        return grads, UpdateStats(loss0, energy, rms_norm(resid.r), rms_norm(S[POP_LAM]),
                                  rms_norm(credit))


class CompiledInferenceRule(InferenceRule):
    """:class:`InferenceRule` with the whole presentation (start, steps, read-out, statistics)
    as one compiled program (:mod:`ctpc.core.compiled`; ``mode``: ``integrator.compile``'s
    'unrolled' or 'loop', see :func:`ctpc.core.compiled.run_presentation`), for batches of
    ``batch_size`` samples;
    batches of another size (an alignment probe with its own ``training.probe_size``) run the
    eager rule, so they compile nothing. The same numbers as the eager rule up to round-off
    (another summation order)."""
    compiles = True     # the first call builds the program (the training loop says so)

    def __init__(self, dyn: Dynamics, solver: Solver, n_steps: int, rates: Rates, method: str,
                 batch_size: int, mode: str = "unrolled", *, dt: Scalar):
        super().__init__(dyn, solver, n_steps, rates, method, dt=dt)
        self.batch_size, self.mode = batch_size, mode
        self._rates_key, self._rates_t = None, ()

    def __call__(self, w: Weights, x: torch.Tensor, y: torch.Tensor):
        if x.shape[1] != self.batch_size:
            return super().__call__(w, x, y)
        net, solver = self.dyn.net, self.solver
        grads, loss0, energy, res, lam, credit = run_presentation(
            w.w_in, w.w_mid, w.w_out, w.b_hid, w.b_out, x, y, *self._rate_tensors(x),
            device_type=x.device.type,
            small=is_small(net.width, y.shape[-1]), mode=self.mode, s_in=net.s_in,
            s_mid=net.s_mid, s_out=net.s_out, activation=net.activation, n_steps=self.n_steps,
            inner_steps=solver.inner_steps, final_dual=solver.final_dual)
        return w.like(grads), UpdateStats(loss0, energy, res, lam, credit)

    def _rate_tensors(self, x: torch.Tensor) -> tuple:
        """(rho, dt k_h, dt k_lam) as tensors on x's device: 0-d when every replica shares the
        value (read once per loop by the generated code), else [R, 1, 1]. Made once: the
        rates and dt are immutable."""
        key = (x.device, x.dtype)
        if self._rates_key != key:
            k, dt = self.rates, self.dt
            as_t = lambda v: torch.as_tensor(v, device=x.device, dtype=x.dtype)
            self._rates_t = (as_t(k.rho), as_t(dt * k.k_h), as_t(dt * k.k_lam))
            self._rates_key = key
        return self._rates_t


class PlasticRule:
    """Continuous plasticity (:mod:`ctpc.training.plasticity`): each presentation integrates
    the neurons and the weights together; ``present`` returns the new weights. ``readout`` is
    the same inference with the weights held fixed (what the probe alignment measures); its
    ``n_steps`` and ``dt`` are the presentation's."""
    plastic = True

    def __init__(self, readout: InferenceRule, solver):
        self.readout, self.solver = readout, solver
        self.method = readout.method

    def present(self, w: Weights, x: torch.Tensor, y: torch.Tensor):
        dyn = self.readout.dyn
        p = dyn.params(w, x, y, self.readout.rates)
        S0 = dyn.initial_state(p)
        loss0 = mse_loss(dyn.residuals(S0, p).y_hat, y)
        out = integrate(self.solver, self.solver.init(S0, p), p, self.readout.n_steps,
                        dt=self.readout.dt, check_every=None)
        w_new = final_weights(self.solver, out.carry)
        S = out.final_state()
        pn = dyn.params(w_new, x, y, self.readout.rates)
        resid = dyn.residuals(S, pn)
        energy, _ = dyn.energy(S, resid, pn)
        return w_new, UpdateStats(loss0, energy, rms_norm(resid.r), rms_norm(S[POP_LAM]),
                                  rms_norm(dyn.credit(S, resid, pn)))
