"""The paper's residual "mean-field" MLP (spec section 1) with stacked hidden layers.

Hidden layers live in one ``[H, B, N]`` tensor (H = L - 1), the L - 2 square weights in one
``[H-1, N, N]`` tensor, so residuals, activity gradients and weight gradients are a handful of
batched kernels with no Python loop over layers or samples.

    pred_1 = s_in W_1 x,  pred_l = h_{l-1} + s_mid W_l phi(h_{l-1}),  y_hat = s_out W_L phi(h_H)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError, layer_shapes


def init_weights(cfg: Config) -> list[np.ndarray]:
    """Unscaled W_1..W_L: from ``network.weights`` or N(0, 1) from ``seed`` (float64, numpy,
    so every backend and device starts from bit-identical weights)."""
    shapes = layer_shapes(cfg)
    if cfg.network.weights is not None:
        return check_weights_file(cfg.network.weights, shapes)
    rng = np.random.default_rng(cfg.seed)
    return [rng.standard_normal(s) for s in shapes]


def check_weights_file(path: str | Path, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"network.weights: file {str(path)!r} does not exist")
    try:
        arrays = np.load(path)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"network.weights: cannot read {str(path)!r} as .npz ({exc})") from None
    expected = [f"w{i + 1}" for i in range(len(shapes))]
    missing = [k for k in expected if k not in arrays.files]
    extra = [k for k in arrays.files if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    out = []
    for key, shape in zip(expected, shapes):
        if key in arrays.files:
            w = arrays[key]
            if tuple(w.shape) != tuple(shape):
                problems.append(f"{key} has shape {tuple(w.shape)}, expected {tuple(shape)}")
            out.append(np.asarray(w, dtype=np.float64))
    if problems:
        raise ConfigError(
            f"network.weights {str(path)!r} does not match the network "
            f"(depth {len(shapes)}, shapes [out, in] {shapes}): " + "; ".join(problems))
    return out


@dataclass
class Residuals:
    """What one pass over the network gives: residuals, output, activations phi(h)."""
    r: torch.Tensor      # [H, B, N]
    y_hat: torch.Tensor  # [B, O]
    a: torch.Tensor      # [H, B, N], phi(h)


class Network:
    """Weights, scales and activation on one device/dtype; pure functions of the state."""

    def __init__(self, weights: list[np.ndarray], activation: str, device, dtype):
        if len(weights) < 2:
            raise ValueError("a network needs at least 2 weight matrices (depth >= 2)")
        as_t = lambda w: torch.as_tensor(np.ascontiguousarray(w), device=device, dtype=dtype)
        self.depth = len(weights)
        self.w_in = as_t(weights[0])                       # [N, D]
        self.w_out = as_t(weights[-1])                     # [O, N]
        n = self.w_in.shape[0]
        mids = weights[1:-1]
        self.w_mid = as_t(np.stack(mids)) if mids else torch.zeros(0, n, n, device=device, dtype=dtype)
        self.w_mid_t = self.w_mid.transpose(1, 2).contiguous()  # for batched h @ W^T
        self.width, self.input_dim = self.w_in.shape
        self.output_dim = self.w_out.shape[0]
        self.s_in = 1.0 / math.sqrt(self.input_dim)
        self.s_mid = 1.0 / math.sqrt(self.width * self.depth)
        self.s_out = 1.0 / self.width
        self.activation = activation
        self.device, self.dtype = device, dtype

    @property
    def n_hidden(self) -> int:
        return self.depth - 1

    # ---------------------------------------------------------------------- activation
    def phi(self, h: torch.Tensor) -> torch.Tensor:
        if self.activation == "tanh":
            return torch.tanh(h)
        if self.activation == "relu":
            return torch.relu(h)
        return h

    def dphi(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        """phi'(h) given a = phi(h); None for linear (multiplying by 1 is skipped)."""
        if self.activation == "tanh":
            return 1.0 - a * a
        if self.activation == "relu":
            return (h > 0).to(h.dtype)
        return None

    # ---------------------------------------------------------------------- passes
    def input_drive(self, x: torch.Tensor) -> torch.Tensor:
        """pred_1 = s_in W_1 x: constant during inference, so computed once."""
        return self.s_in * (x @ self.w_in.T)

    def feedforward(self, x: torch.Tensor) -> torch.Tensor:
        """h_l = pred_l for all hidden layers (r = 0). Sequential by nature: runs once."""
        h = torch.empty(self.n_hidden, x.shape[0], self.width, device=self.device, dtype=self.dtype)
        h[0] = self.input_drive(x)
        for l in range(1, self.n_hidden):
            h[l] = h[l - 1] + self.s_mid * (self.phi(h[l - 1]) @ self.w_mid[l - 1].T)
        return h

    def residuals(self, h: torch.Tensor, drive: torch.Tensor) -> Residuals:
        a = self.phi(h)
        r = torch.empty_like(h)
        r[0] = h[0] - drive
        if self.n_hidden > 1:
            torch.sub(h[1:], self._mid_predictions(h, a), out=r[1:])
        return Residuals(r, self._output(a), a)

    def _mid_predictions(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # pred_{2..H} = h_{1..H-1} + s_mid phi(h_{1..H-1}) W^T, one batched kernel
        return torch.baddbmm(h[:-1], a[:-1], self.w_mid_t, alpha=self.s_mid)

    def _output(self, a: torch.Tensor) -> torch.Tensor:
        return self.s_out * (a[-1] @ self.w_out.T)

    def predictions(self, h: torch.Tensor, drive: torch.Tensor):
        """(pred [H, B, N], y_hat [B, O]): what each layer receives from below."""
        a = self.phi(h)
        pred = torch.empty_like(h)
        pred[0] = drive
        if self.n_hidden > 1:
            pred[1:] = self._mid_predictions(h, a)
        return pred, self._output(a)

    def constraint_jvp(self, v: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        """A v, with A = dr/dh the constraint Jacobian (unit lower block-bidiagonal):
        (A v)_1 = v_1,  (A v)_l = v_l - J_l v_{l-1},  J_l = I + s_mid W_l diag phi'(h_{l-1})."""
        out = v.clone()
        if self.n_hidden > 1:
            dv = v[:-1] if d is None else d[:-1] * v[:-1]
            out[1:] -= v[:-1] + self.s_mid * torch.bmm(dv, self.w_mid_t)
        return out

    def constraint_vjp(self, u: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        """A^T u: (A^T u)_l = u_l - J_{l+1}^T u_{l+1} (the credit a layer sends down)."""
        out = u.clone()
        if self.n_hidden > 1:
            back = self.s_mid * torch.bmm(u[1:], self.w_mid)   # s_mid W_{l+1}^T u_{l+1}
            if d is not None:
                back = back * d[:-1]
            out[:-1] -= u[1:] + back
        return out

    def activity_gradient(self, h, res: Residuals, g, y) -> torch.Tensor:
        """dL/dh for composite credit g = rho*err + lam (spec section 2), per sample:
        A^T g plus the output term s_out phi'(h_H) W_L^T (y_hat - y) on the last layer."""
        return self.activity_gradient_at(h, res.a, res.y_hat, g, y)

    def activity_gradient_at(self, h, a, y_hat, g, y) -> torch.Tensor:
        """activity_gradient from phi(h) and y_hat given directly (not from a Residuals)."""
        d = self.dphi(h, a)
        grad = self.constraint_vjp(g, d)
        out_err = (y_hat - y) @ self.w_out
        grad[-1] += self.s_out * (out_err if d is None else out_err * d[-1])
        return grad

    def feedback(self, h, a, y_hat, g, y) -> torch.Tensor:
        """Credit each layer receives from above, g - dL/dh: J_{l+1}^T g_{l+1} (l < H) and
        -s_out phi'(h_H) W_L^T (y_hat - y) (what the Brian2 network_operation writes into fb)."""
        return g - self.activity_gradient_at(h, a, y_hat, g, y)

    def weight_gradients(self, res: Residuals, g, x, y):
        """dL/dW (batch means, loss-gradient sign): (W_1 [N,D], W_2..W_{L-1} [H-1,N,N], W_L [O,N])."""
        b = x.shape[0]
        g_in = (-self.s_in / b) * (g[0].T @ x)
        g_mid = (-self.s_mid / b) * torch.bmm(g[1:].transpose(1, 2), res.a[:-1])
        g_out = (self.s_out / b) * ((res.y_hat - y).T @ res.a[-1])
        return g_in, g_mid, g_out

    def split_weights(self, stacked) -> list[torch.Tensor]:
        """(in, mid, out) -> [W_1, ..., W_L]."""
        g_in, g_mid, g_out = stacked
        return [g_in, *g_mid.unbind(0), g_out]
