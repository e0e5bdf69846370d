"""Independent JAX implementation of the paper's discrete PC-ALM training step (test/benchmark only).

This file is OPTIONAL: it is not part of the ``ctpc`` package, nothing in ``ctpc`` imports it, and
it is only used by ``tests/test_jax_reference.py`` (which is skipped when jax is absent) and as the
comparison target of ctpc's speed issue (how fast the authors' style of code, ``jax.jit`` +
``jax.lax.scan``, runs one training step's workload). It was written from
``docs/pcalm-spec.md`` §1-§3 alone, independently of ctpc's code.

Network (spec §1), L weight matrices, H = L - 1 hidden layers, no biases::

    pred_1 = s_in  W_1 x                                s_in  = 1/sqrt(D)
    pred_l = h_{l-1} + s_mid W_l phi(h_{l-1})   l=2..H  s_mid = 1/sqrt(N L)
    yhat   = s_out W_L phi(h_H)                         s_out = 1/N
    r_l    = h_l - pred_l

Energy, written as a batch mean the way the authors' code does (spec §2)::

    E(h, lam, W) = mean_b [ 1/2 |yhat - y|^2 + sum_l ( lam_l . r_l + rho/2 |r_l|^2 ) ]

Algorithm run by ``make_training_step(...)()`` (spec §3, inner_steps = 1)::

    h   <- feed-forward pass (r = 0);  lam <- 0
    repeat T - 1 times:
        h   <- h - (eta B) dE/dh          # batch-mean energy, step scaled by B: per-sample step eta
        lam <- lam + alpha r(h)           # the UPDATED h (Gauss-Seidel order)
    h <- h - (eta B) dE/dh                # final primal step
    timing == "post_dual":  lam <- lam + alpha r(h)
    return dE/dW_1 .. dE/dW_L at (h, lam)  # batch mean, loss-gradient sign; W <- W - lr * this

PC is the same with alpha = 0 (lam stays exactly 0).

Implementation: the L - 2 square middle weights are stacked into one ``[L-2, N, N]`` array and the
hidden state into ``[H, B, N]``, so one energy evaluation is a handful of batched einsums with no
Python loop over layers. Both the activity gradient and the weight read-out are ``jax.grad`` of the
same energy function. The feed-forward pass is a ``lax.scan`` over the middle layers, the inference
is a ``lax.scan`` over the T - 1 (primal, dual) iterations, and feed-forward + inference + read-out
are one ``jax.jit``-compiled function.

Benchmark (median of 31 timed calls after warm-up; relu, D = 784, O = 10, N(0,1) weights/inputs)::

    python sims/jax_pcalm.py --width 32 --depth 32 --steps 64 --batch 64 [--dtype float64]
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "linear": lambda h: h,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,  # custom JVP: derivative 0 at h = 0
}


def _scales(D: int, N: int, L: int):
    """The mean-field scales (s_in, s_mid, s_out) of spec §1."""
    return 1.0 / np.sqrt(D), 1.0 / np.sqrt(N * L), 1.0 / N


def make_training_step(weights, x, y, *, activation, T, eta, alpha, rho=1.0,
                       timing="pre_dual", dtype="float32"):
    """Build one discrete PC-ALM training step's workload: T inference steps + weight read-out.

    Args:
        weights: list of L >= 2 numpy arrays W_1 .. W_L, unscaled, ``[out, in]``:
            ``[N, D]``, ``[N, N]`` x (L - 2), ``[O, N]``.
        x: inputs ``[B, D]``.  y: targets ``[B, O]``.
        activation: "linear", "tanh" or "relu".
        T: inference budget (number of primal steps, >= 1).
        eta: per-sample activity step size (state_lr).  alpha: dual step (0 gives PC).
        rho: penalty weight.
        timing: "pre_dual" (read out at the lambda of the last primal step) or "post_dual"
            (one more dual step before the read-out).
        dtype: "float32" or "float64" (float64 needs ``jax_enable_x64`` switched on beforehand).

    Returns:
        A zero-argument callable ``run()`` that executes the whole step (one jitted call), blocks
        until the result is ready, and returns the L weight gradients dL_rho/dW_l as jax arrays,
        each ``[out, in]`` like ``weights``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
    if timing not in ("pre_dual", "post_dual"):
        raise ValueError(f"timing must be 'pre_dual' or 'post_dual', not {timing!r}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    L = len(weights)
    if L < 2:
        raise ValueError(f"need at least 2 weight matrices, got {L}")
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 needs jax.config.update('jax_enable_x64', True) first")

    phi = ACTIVATIONS[activation]
    N, D = weights[0].shape
    O = weights[-1].shape[0]
    B = x.shape[0]
    s_in, s_mid, s_out = _scales(D, N, L)
    post_dual = timing == "post_dual"

    # Device arrays: W_in [N, D], W_mid [L-2, N, N] (possibly empty), W_out [O, N], x [B, D], y [B, O]
    w_in = jnp.asarray(weights[0], dtype)
    w_mid = jnp.asarray(np.stack(weights[1:-1]) if L > 2 else np.zeros((0, N, N)), dtype)
    w_out = jnp.asarray(weights[-1], dtype)
    xs, ys = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    assert w_mid.shape == (L - 2, N, N) and w_out.shape == (O, N) and ys.shape == (B, O)

    def residuals(W, h):
        """r [H, B, N] of the stacked hidden state h [H, B, N]; W = (w_in, w_mid, w_out)."""
        w_in, w_mid, _ = W
        pred_1 = s_in * xs @ w_in.T                                        # [B, N]
        prev = h[:-1]                                                      # [H-1, B, N]
        pred_rest = prev + s_mid * jnp.einsum("lij,lbj->lbi", w_mid, phi(prev))
        return h - jnp.concatenate([pred_1[None], pred_rest], axis=0)

    def energy(h, lam, W):
        """Batch-mean augmented Lagrangian L_rho(h, lam; W) (scalar); h, lam [H, B, N]."""
        yhat = s_out * phi(h[-1]) @ W[2].T                                 # [B, O]
        r = residuals(W, h)
        per_sample = (0.5 * jnp.sum((yhat - ys) ** 2, axis=-1)
                      + jnp.sum(lam * r + 0.5 * rho * r * r, axis=(0, 2)))  # [B]
        return jnp.mean(per_sample)

    grad_h = jax.grad(energy, argnums=0)   # dE/dh [H, B, N]  (batch mean: 1/B per sample)
    grad_w = jax.grad(energy, argnums=2)   # (dE/dW_in, dE/dW_mid, dE/dW_out)
    step = eta * B                          # per-sample step eta on the per-sample gradient

    def feed_forward(W):
        """h_l = pred_l for all l: [H, B, N]; a lax.scan over the middle layers."""
        w_in, w_mid, _ = W
        h1 = s_in * xs @ w_in.T                                            # [B, N]

        def layer(h_prev, w):
            h_next = h_prev + s_mid * phi(h_prev) @ w.T
            return h_next, h_next

        _, rest = jax.lax.scan(layer, h1, w_mid)                           # [H-1, B, N]
        return jnp.concatenate([h1[None], rest], axis=0)

    @jax.jit
    def training_step(W):
        h = feed_forward(W)
        lam = jnp.zeros_like(h)

        def iteration(carry, _):
            h, lam = carry
            h = h - step * grad_h(h, lam, W)          # primal step
            lam = lam + alpha * residuals(W, h)       # dual step with the updated h
            return (h, lam), None

        (h, lam), _ = jax.lax.scan(iteration, (h, lam), None, length=T - 1)
        h = h - step * grad_h(h, lam, W)              # final primal step
        if post_dual:
            lam = lam + alpha * residuals(W, h)
        g_in, g_mid, g_out = grad_w(h, lam, W)
        # Split the stacked middle gradient into per-matrix outputs (output plumbing only).
        return [g_in, *(g_mid[i] for i in range(L - 2)), g_out]

    W = (w_in, w_mid, w_out)

    def run():
        """Execute the jitted step; returns [dL/dW_1, ..., dL/dW_L] once computed."""
        return jax.block_until_ready(training_step(W))

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description="Time one discrete PC-ALM training step in JAX "
                                "(T inference steps + weight read-out), relu, D=784, O=10.")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--steps", type=int, default=64, help="inference budget T")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu")
    p.add_argument("--eta", type=float, default=0.25)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    D, O, N, L, B = 784, 10, a.width, a.depth, a.batch
    rng = np.random.default_rng(a.seed)
    shapes = [(N, D)] + [(N, N)] * (L - 2) + [(O, N)]
    weights = [rng.standard_normal(s) for s in shapes]
    x = rng.standard_normal((B, D))
    y = np.eye(O)[rng.integers(0, O, B)]

    run = make_training_step(weights, x, y, activation=a.activation, T=a.steps, eta=a.eta,
                             alpha=a.alpha, dtype=a.dtype)
    t0 = time.perf_counter()
    run()                                   # compile + first run
    compile_s = time.perf_counter() - t0
    for _ in range(3):
        run()                               # warm-up
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) * 1e3
    print(f"jax {jax.__version__} {jax.default_backend()} {a.dtype} {a.activation}: "
          f"N={N} L={L} T={a.steps} B={B}: median {med:.3f} ms over {a.repeats} "
          f"(first call incl. compile {compile_s:.2f} s)")
    return med


if __name__ == "__main__":
    main()
