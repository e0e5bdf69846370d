"""The paper's activity step-size rule, eta_h = 1/lambda_max (spec section 3).

lambda_max is the largest eigenvalue of the activity Hessian rho A^T A of the constraint term at
the feed-forward point (A = dr/dh, see :meth:`ctpc.network.Network.constraint_jvp`), found by
power iteration on every sample at once; the rule takes the worst sample of the batch. Used by
``dynamics.state_lr: auto`` / ``tau_h: auto`` when a config is loaded.
"""
from __future__ import annotations

import torch

from .config import Config
from .model import build_model
from .network import Network, Weights


def lambda_max(net: Network, w: Weights, x: torch.Tensor, rho: float, iters: int = 5000,
               rtol: float = 1e-10) -> torch.Tensor:
    """[R] largest eigenvalue of rho A^T A at the feed-forward point, max over the batch.

    Power iteration per sample (the Rayleigh quotient of each sample's own block), from a
    seeded start so the result is reproducible; stops when every replica's value has settled to
    ``rtol``."""
    with torch.no_grad():
        h = net.feedforward(w, x)
        d = net.dphi(h, net.phi(h))
        gen = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(h.shape, generator=gen, dtype=h.dtype).to(h.device)
        dims = (0, 3)    # a sample's vector spans its layers and units
        prev = None
        for _ in range(iters):
            v = v / v.square().sum(dim=dims, keepdim=True).sqrt()
            wv = rho * net.constraint_vjp(w, net.constraint_jvp(w, v, d), d)
            lam = (v * wv).sum(dim=dims).amax(dim=-1)      # [R]: worst sample per replica
            if prev is not None and bool(((lam - prev).abs() <= rtol * lam).all()):
                break
            prev, v = lam, wv
    return lam


def activity_hessian_lambda_max(cfg: Config, iters: int = 5000, rtol: float = 1e-10) -> float:
    """lambda_max for one config's network and batch (float64, CPU)."""
    cfg = cfg.model_copy(deep=True)
    cfg.dtype, cfg.device = "float64", "cpu"
    # the step size does not enter lambda_max; a placeholder lets an 'auto' config build
    if cfg.dynamics.state_lr == "auto":
        cfg.dynamics.state_lr = 1.0
    if cfg.dynamics.tau_h == "auto":
        cfg.dynamics.tau_h = 1.0
    model = build_model(cfg)
    return float(lambda_max(model.net, model.weights, model.x, cfg.dynamics.rho, iters, rtol)[0])


def resolve_auto_step(cfg: Config) -> Config:
    """``state_lr: auto`` -> 1/lambda_max; ``tau_h: auto`` -> dt * lambda_max (the same rule:
    dt/tau_h = 1/lambda_max)."""
    cfg = cfg.model_copy(deep=True)
    lam = activity_hessian_lambda_max(cfg)
    if cfg.dynamics.state_lr == "auto":
        cfg.dynamics.state_lr = 1.0 / lam
    if cfg.dynamics.tau_h == "auto":
        cfg.dynamics.tau_h = cfg.integrator.dt * lam
    return cfg
