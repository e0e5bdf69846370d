"""The one right-hand side of PC / PC-ALM (spec section 4), shared by every torch scheme.

State ``S`` is a single tensor ``[P, H, B, N]`` holding the three populations:

    S[0] = h    activity neurons        tau_h   dh/dt   = -dL/dh
    S[1] = lam  multiplier neurons      tau_lam dlam/dt = e
    S[2] = e    error neurons (leaky)   tau_e   de/dt   = r - e       (only when tau_e > 0)

With tau_e = 0 the error neurons are instantaneous (e = r) and P = 2. PC is PC-ALM with
1/tau_lam = 0, so lam stays exactly 0. One stacked state makes every explicit scheme a few
whole-tensor operations.
"""
from __future__ import annotations

import math

import torch

from .network import Network, Residuals

H, LAM, ERR = 0, 1, 2


class Dynamics:
    def __init__(self, net: Network, x: torch.Tensor, y: torch.Tensor, *, rho: float,
                 tau_h: float, tau_lambda: float, tau_e: float):
        self.net, self.x, self.y = net, x, y
        self.rho = float(rho)
        self.tau_h, self.tau_lambda, self.tau_e = float(tau_h), float(tau_lambda), float(tau_e)
        self.k_h = 1.0 / self.tau_h
        self.k_lam = 0.0 if math.isinf(self.tau_lambda) else 1.0 / self.tau_lambda
        self.leaky = self.tau_e > 0
        self.k_e = 1.0 / self.tau_e if self.leaky else 0.0
        self.drive = net.input_drive(x)   # pred_1, constant over the run

    @property
    def n_pop(self) -> int:
        return 3 if self.leaky else 2

    def initial_state(self) -> torch.Tensor:
        """Feed-forward activities, lam = 0, e = r = 0 (the paper's fresh start per batch)."""
        S = torch.zeros(self.n_pop, self.net.n_hidden, self.x.shape[0], self.net.width,
                        device=self.net.device, dtype=self.net.dtype)
        S[H] = self.net.feedforward(self.x)
        return S

    # ---------------------------------------------------------------- pieces of the RHS
    def residuals(self, S: torch.Tensor) -> Residuals:
        return self.net.residuals(S[H], self.drive)

    def error(self, S: torch.Tensor, res: Residuals) -> torch.Tensor:
        """What the error neurons report: e (leaky) or r (instantaneous)."""
        return S[ERR] if self.leaky else res.r

    def credit(self, S: torch.Tensor, res: Residuals) -> torch.Tensor:
        """Composite credit g = rho*e + lam (what drives activity and weight updates)."""
        return torch.add(S[LAM], self.error(S, res), alpha=self.rho)

    def activity_gradient(self, S: torch.Tensor, res: Residuals) -> torch.Tensor:
        return self.net.activity_gradient(S[H], res, self.credit(S, res), self.y)

    # ---------------------------------------------------------------- full RHS
    def rhs(self, S: torch.Tensor) -> torch.Tensor:
        """dS/dt."""
        res = self.residuals(S)
        dS = torch.empty_like(S)
        torch.mul(self.activity_gradient(S, res), -self.k_h, out=dS[H])
        torch.mul(self.error(S, res), self.k_lam, out=dS[LAM])
        if self.leaky:
            torch.mul(res.r - S[ERR], self.k_e, out=dS[ERR])
        return dS

    # ---------------------------------------------------------------- read-outs
    def energy(self, S: torch.Tensor, res: Residuals) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_rho, l): batch-mean augmented Lagrangian and loss (PC: lam = 0 gives F)."""
        b = self.x.shape[0]
        loss = 0.5 * ((res.y_hat - self.y) ** 2).sum() / b
        constraint = (S[LAM] * res.r).sum() + 0.5 * self.rho * (res.r * res.r).sum()
        return loss + constraint / b, loss

    def weight_gradients(self, S: torch.Tensor, res: Residuals):
        """dL_rho/dW at the current state: the local (credit x presynaptic rate) read-out."""
        return self.net.weight_gradients(res, self.credit(S, res), self.x, self.y)
