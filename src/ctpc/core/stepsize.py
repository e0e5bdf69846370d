"""The paper's activity step-size rule, eta_h = 1/lambda_max (spec section 3).

lambda_max is the largest eigenvalue of the activity Hessian rho A^T A of the constraint term at
the feed-forward point (A = dr/dh, see :meth:`ctpc.core.network.Network.constraint_jvp`). Two
estimators, chosen by ``dynamics.step_rule``:

* ``paper`` (default): the estimate behind the authors' published step sizes -- power iteration
  on the whole batch as one vector (the operator is block-diagonal over samples), Rayleigh
  quotient, stopped when it changes by at most 1e-3 relative. It stops before it converges on
  these clustered spectra and lands 0.5-4 % below the true lambda_max; it reproduces the
  authors' table (``eta_best_by_cell.csv``) to within 0.6 % (docs/pcalm-spec.md, section 3).
* ``exact``: Lanczos on every sample at once to 1e-12; the worst sample of the batch.

Pure functions of a network, its weights and a batch; :mod:`ctpc.build.auto_step` applies
them to a config for ``dynamics.state_lr: auto`` / ``tau_h: auto``.
"""
from __future__ import annotations

import torch

from ctpc.core.network import Network, Weights


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












