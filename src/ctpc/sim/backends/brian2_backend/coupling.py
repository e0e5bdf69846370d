"""``brian2.construction: network_operation``: the inter-layer coupling as two Brian2
``NetworkOperation``s instead of dense ``Synapses``.

The neurons are the same NeuronGroups with the same equations, integrated by Brian2; only the
summed variables ``pred``, ``yhat`` and ``fb`` are written by Python code at the same schedule
slots the summed-variable updaters would occupy, with batched matrix products
(:meth:`ctpc.core.network.Network.predictions` / :meth:`~ctpc.core.network.Network.feedback`, the torch
backend's own code). That removes the B x N^2 replicated synapse weights and the per-synapse
gather/scatter. Runtime targets (numpy, cython) only: standalone code cannot call Python.
"""
from __future__ import annotations

import brian2 as b2
import numpy as np
import torch

from ctpc.sim.backends.brian2_backend.equations import (SLOT_FEEDBACK, SLOT_PREDICT_EXPLICIT,
    SLOT_PREDICT_GS, ModelSpec)


class TorchCoupling:
    """``net``: the torch :class:`~ctpc.core.network.Network`; ``p``: the run's
    :class:`~ctpc.core.dynamics.Params` (one replica)."""

    def __init__(self, spec: ModelSpec, layers, output, net, p):
        self.spec, self.net, self.p = spec, net, p
        self.b, self.n = spec.batch, spec.width
        view = lambda grp, name: grp.variables[name].get_value()   # the array Brian2 integrates
        self.h = [view(g, "h") for g in layers]
        self.lam = [view(g, "lam") for g in layers]
        self.err = [view(g, "err") for g in layers] if spec.leaky else None
        self.pred = [view(g, "pred") for g in layers]
        self.fb = [view(g, "fb") for g in layers]
        self.yhat = view(output, "yhat")
        self.y = torch.as_tensor(view(output, "y").reshape(1, self.b, -1).copy())
        # with biases, pred and yhat hold the synaptic part and b is the neurons' constant
        w = p.weights
        self.b_hid = None if w.b_hid is None else w.b_hid[:, :1]           # [H, 1, 1, N]
        self.b_out = None if w.b_out is None else w.b_out[:1]              # [1, 1, O]

    def _stack(self, arrays) -> torch.Tensor:
        """Brian2's per-layer arrays -> [H, 1, B, N] (one replica)."""
        return torch.from_numpy(np.stack([a.reshape(1, self.b, self.n) for a in arrays]))

    def predict(self) -> None:
        pred, y_hat = self.net.predictions(self.p.weights, self._stack(self.h), self.p.drive)
        if self.b_hid is not None:
            pred, y_hat = pred - self.b_hid, y_hat - self.b_out
        pred = pred.numpy()
        for l, target in enumerate(self.pred):
            target[:] = pred[l].ravel()
        self.yhat[:] = y_hat.numpy().ravel()

    def feed_back(self) -> None:
        h = self._stack(self.h)
        # credit = rho * err + lam from the stored predictions, as the synapses read them
        pred = self._stack(self.pred)
        y_hat = torch.from_numpy(self.yhat.reshape(1, self.b, -1))
        if self.b_hid is not None:
            pred, y_hat = pred + self.b_hid, y_hat + self.b_out
        err = self._stack(self.err) if self.err is not None else h - pred
        credit = torch.add(self._stack(self.lam), err, alpha=self.spec.constants["rho"][0])
        fb = self.net.feedback(self.p.weights, h, self.net.phi(h), y_hat, credit,
                               self.y).numpy()
        for l, target in enumerate(self.fb):
            target[:] = fb[l].ravel()

    def operations(self, clock) -> list[b2.NetworkOperation]:
        slot = SLOT_PREDICT_GS if self.spec.gauss_seidel else SLOT_PREDICT_EXPLICIT
        ops = []
        for fn, (when, order), name in ((self.predict, slot, "coupling_predict"),
                                        (self.feed_back, SLOT_FEEDBACK, "coupling_feedback")):
            ops.append(b2.NetworkOperation(fn, clock=clock, when=when, order=order, name=name))
        return ops
