"""The paper's activity step-size rule, eta_h = 1/lambda_max (spec section 3).

lambda_max is the largest eigenvalue of the activity Hessian rho A^T A of the constraint term at
the feed-forward point (A = dr/dh, see :meth:`ctpc.network.Network.constraint_jvp`). Two
estimators, chosen by ``dynamics.step_rule``:

* ``paper`` (default): the estimate behind the authors' published step sizes -- power iteration
  on the whole batch as one vector (the operator is block-diagonal over samples), Rayleigh
  quotient, stopped when it changes by at most 1e-3 relative. It stops before it converges on
  these clustered spectra and lands 0.5-4 % below the true lambda_max; it reproduces the
  authors' table (``eta_best_by_cell.csv``) to within 0.6 % (docs/pcalm-spec.md, section 3).
* ``exact``: Lanczos on every sample at once to 1e-12; the worst sample of the batch.

Used by ``dynamics.state_lr: auto`` / ``tau_h: auto`` when a config is loaded, with the initial
weights and the config's batch (it does not follow the weights during training).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import Config
from .model import build_model
from .network import Network, Weights


def lambda_max(net: Network, w: Weights, x: torch.Tensor, rho: float, iters: int = 5000,
               rtol: float = 1e-12) -> torch.Tensor:
    """[R] largest eigenvalue of rho A^T A at the feed-forward point, max over the batch.

    Lanczos on every sample at once (each sample's own symmetric operator), from a seeded start
    so the result is reproducible. Without reorthogonalisation the extreme Ritz value still
    converges to lambda_max (loss of orthogonality only duplicates converged values), and
    memory stays two vectors. Lanczos needs ~1/sqrt(gap) steps where power iteration needs
    ~1/gap; these spectra cluster near the top (gap ~ 1/H^2), so that is ~H steps instead of
    ~H^2. Stops when every replica's value has settled to ``rtol`` (checked every 8 steps)."""
    with torch.no_grad():
        h = net.feedforward(w, x)
        d = net.dphi(h, net.phi(h))
        gen = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(h.shape, generator=gen, dtype=h.dtype).to(h.device)
        dims = (0, 3)    # a sample's vector spans its layers and units
        dot = lambda a, b: (a * b).sum(dim=dims, keepdim=True)            # [1, R, B, 1]
        v = v / dot(v, v).sqrt()
        v_prev, beta = torch.zeros_like(v), torch.zeros_like(dot(v, v))
        alphas, betas, prev = [], [], None
        steps = min(iters, h.shape[0] * h.shape[3])    # the Krylov space is exhausted there
        for j in range(steps):
            wv = rho * net.constraint_vjp(w, net.constraint_jvp(w, v, d), d)
            a = dot(v, wv)
            wv = wv - a * v - beta * v_prev
            beta = dot(wv, wv).sqrt()
            alphas.append(a.reshape(-1))
            betas.append(beta.reshape(-1))
            ok = beta > 1e-13 * a.abs().clamp_min(1.0)     # else: an invariant subspace
            v_prev, v = v, torch.where(ok, wv / torch.where(ok, beta, 1.0), 0.0)
            beta = torch.where(ok, beta, 0.0)
            if (j + 1) % 8 == 0 or j + 1 == steps:
                lam = _top_ritz(alphas, betas).view(h.shape[1], h.shape[2]).amax(-1)   # [R]
                if prev is not None and bool(((lam - prev).abs() <= rtol * lam).all()):
                    break
                prev = lam
    return lam


PAPER_RTOL = 1e-3      # the authors' stopping rule, fitted to their table (spec section 3)


def power_lambda_max(net: Network, w: Weights, x: torch.Tensor, rho: float,
                     rtol: float = PAPER_RTOL, iters: int = 10_000) -> torch.Tensor:
    """[R] the paper's estimate of lambda_max of rho A^T A at the feed-forward point.

    Power iteration on the batch as one vector per replica (samples are independent blocks of
    the operator, so this converges to the worst sample's lambda_max), from a seeded Gaussian
    start; returns the Rayleigh quotient v^T M v of the first iterate that differs from the
    previous one by at most ``rtol`` relative. With rtol = 1e-3 it stops after ~20-50
    products, well before convergence when the top of the spectrum is clustered."""
    with torch.no_grad():
        h = net.feedforward(w, x)
        d = net.dphi(h, net.phi(h))
        gen = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(h.shape, generator=gen, dtype=h.dtype).to(h.device)
        dims = (0, 2, 3)                        # a replica's vector spans layers, samples, units
        norm = lambda a: (a * a).sum(dim=dims, keepdim=True).sqrt()      # [1, R, 1, 1]
        v = v / norm(v)
        prev = None
        for _ in range(iters):
            mv = rho * net.constraint_vjp(w, net.constraint_jvp(w, v, d), d)
            lam = (v * mv).sum(dim=dims)                                    # [R]
            if prev is not None and bool(((lam - prev).abs() <= rtol * lam.abs()).all()):
                break
            prev = lam
            v = mv / norm(mv)
    return lam.reshape(-1)


def _top_ritz(alphas: list, betas: list) -> torch.Tensor:
    """Largest eigenvalue of each sample's Lanczos tridiagonal matrix: [samples]."""
    a = torch.stack(alphas, dim=-1)                                 # [S, k]
    b = torch.stack(betas[:-1], dim=-1) if len(betas) > 1 else a[:, :0]
    T = torch.diag_embed(a) + torch.diag_embed(b, 1) + torch.diag_embed(b, -1)
    return torch.linalg.eigvalsh(T)[:, -1]


_MEMO: dict = {}


def _memo_key(cfg: Config, iters: int, rtol: float) -> str:
    """What lambda_max depends on: the network, its initial weights (seed or file), the batch,
    rho and the rule. Not the method, the step sizes or the training options: the cells of a
    sweep that differ only in those share one computation."""
    d = cfg.to_dict()
    return json.dumps([d["network"], d["data"], d["seed"], d["dynamics"]["rho"],
                       cfg.dynamics.step_rule, iters, rtol,
                       _file_stamp(cfg.network.weights), _file_stamp(cfg.data.path)],
                      sort_keys=True, default=str)


def _file_stamp(path) -> tuple | None:
    if path is None:
        return None
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def activity_hessian_lambda_max(cfg: Config, iters: int = 5000, rtol: float = 1e-12) -> float:
    """lambda_max for one config's network and batch (float64, CPU) by the config's
    ``dynamics.step_rule`` (``iters``/``rtol`` apply to the exact rule); remembered per process
    for configs that share network, weights, batch, rho and rule."""
    key = _memo_key(cfg, iters, rtol)
    if key not in _MEMO:
        _MEMO[key] = _lambda_max_of(cfg, iters, rtol)
    return _MEMO[key]


def _lambda_max_of(cfg: Config, iters: int, rtol: float) -> float:
    cfg = cfg.model_copy(deep=True)
    cfg.dtype, cfg.device = "float64", "cpu"
    # the step size does not enter lambda_max; a placeholder lets an 'auto' config build
    if cfg.dynamics.state_lr == "auto":
        cfg.dynamics.state_lr = 1.0
    if cfg.dynamics.tau_h == "auto":
        cfg.dynamics.tau_h = 1.0
    model = build_model(cfg)
    if cfg.dynamics.step_rule == "paper":
        return float(power_lambda_max(model.net, model.weights, model.x, cfg.dynamics.rho)[0])
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
