"""The paper's residual "mean-field" MLP (spec section 1): structure, weights, and pure passes.

    pred_1 = s_in W_1 x,  pred_l = h_{l-1} + s_mid W_l phi(h_{l-1}),  y_hat = s_out W_L phi(h_H)

:class:`Network` is the *structure* only (sizes, scales, activation, device, dtype). Weights are
never stored in it: every pass takes a :class:`Weights` argument, so an optimiser step, a
replica axis or ``torch.func`` can change them without anything derived going stale.

Layout (R replicas: networks of the same shape run as one tensor program; a single run is R = 1):

    hidden activities   h      [H, R, B, N]      H = L - 1 hidden layers, layer-major
    input, target       x, y   [R, B, D], [R, B, O]
    weights             w_in [R, N, D],  w_mid [H-1, R, N, N],  w_out [R, O, N]

Layer-major storage makes ``h[:-1]`` and ``w_mid`` contiguous blocks, so the L - 2 square layers
of all replicas are one batched matrix product with no copy, and no Python loop over layers,
samples or replicas runs per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctpc.config.schema import Config, ConfigError, layer_shapes


# ---------------------------------------------------------------------------- initial weights
def init_weights(cfg: Config) -> list[np.ndarray]:
    """Unscaled W_1..W_L of one network: from ``network.weights`` or N(0, 1) from ``seed``
    (float64 numpy, so every backend, device and replica starts from bit-identical weights)."""
    shapes = layer_shapes(cfg)
    if cfg.network.weights is not None:
        return check_weights_file(cfg.network.weights, shapes, cfg.dtype)
    rng = np.random.default_rng(cfg.seed)
    return [rng.standard_normal(s) for s in shapes]


FLOAT32_MAX = float(np.finfo(np.float32).max)
WEIGHT_KINDS = {"b": "bool", "i": "int", "u": "unsigned int", "f": "float"}


def check_weights_file(path: str | Path, shapes: list[tuple[int, int]],
                       dtype: str | None = None) -> list[np.ndarray]:
    """Read ``w1 .. wL`` from an .npz and check names, shapes and values (ConfigError): real
    numbers only (complex, strings, objects are refused, never cast), finite, and with
    ``dtype`` 'float32', within float32's range."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"network.weights: {str(path)!r} {what}; expected an .npz file with "
                          f"arrays w1 .. w{len(shapes)}")
    try:
        arrays = np.load(path, allow_pickle=False)
        files = list(arrays.files)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise ConfigError(f"network.weights: cannot read {str(path)!r} as .npz ({exc})") from None
    expected = [f"w{i + 1}" for i in range(len(shapes))]
    missing = [k for k in expected if k not in files]
    extra = [k for k in files if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    out = []
    for key, shape in zip(expected, shapes):
        if key not in files:
            continue
        try:
            stored = arrays[key]
        except Exception as exc:  # noqa: BLE001 - object arrays (allow_pickle), damaged zip
            problems.append(f"{key} cannot be read as a numeric array ({exc})")
            continue
        if stored.dtype.kind not in WEIGHT_KINDS:
            what = "complex numbers" if stored.dtype.kind == "c" else "not real numbers"
            problems.append(f"{key} has dtype {stored.dtype} ({what}); weights must be real "
                            "numbers (float, int or bool), saved e.g. as w.real.astype(float)")
            continue
        w = np.asarray(stored, dtype=np.float64)
        if tuple(w.shape) != tuple(shape):
            problems.append(f"{key} has shape {tuple(w.shape)}, expected {tuple(shape)}")
        elif not np.isfinite(w).all():
            problems.append(f"{key} holds {int((~np.isfinite(w)).sum())} non-finite value(s)")
        elif dtype == "float32" and w.size and np.abs(w).max() > FLOAT32_MAX:
            problems.append(f"{key} holds {int((np.abs(w) > FLOAT32_MAX).sum())} value(s) "
                            f"beyond the float32 range (up to {np.abs(w).max():.3g}; float32 "
                            f"holds |x| <= {FLOAT32_MAX:.3g}): set dtype: float64 or rescale "
                            "the weights")
        out.append(w)
    if problems:
        raise ConfigError(
            f"network.weights {str(path)!r} does not match the network "
            f"(depth {len(shapes)}, shapes [out, in] {shapes}): " + "; ".join(problems))
    return out


# ---------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class Weights:
    """Unscaled weights of R networks (also used for weight *gradients*, same layout).

    w_in [R, N, D] (W_1), w_mid [H-1, R, N, N] (W_2 .. W_{L-1}), w_out [R, O, N] (W_L)."""
    w_in: torch.Tensor
    w_mid: torch.Tensor
    w_out: torch.Tensor

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.w_in, self.w_mid, self.w_out

    @property
    def replicas(self) -> int:
        return self.w_in.shape[0]

    def matrices(self, replica: int = 0) -> list[torch.Tensor]:
        """[W_1, ..., W_L] of one replica, each [out, in] (views)."""
        return [self.w_in[replica], *self.w_mid[:, replica].unbind(0), self.w_out[replica]]

    def map(self, fn) -> "Weights":
        return Weights(*(fn(t) for t in self.tensors))

    @staticmethod
    def stack(per_replica: list[list[np.ndarray]], device, dtype) -> "Weights":
        """Weights from R lists [W_1 .. W_L] (numpy or torch, [out, in] each)."""
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device, dtype=dtype)
        w_in = as_t(np.stack([np.asarray(ws[0]) for ws in per_replica]))
        w_out = as_t(np.stack([np.asarray(ws[-1]) for ws in per_replica]))
        n, depth = w_in.shape[1], len(per_replica[0])
        if depth > 2:
            w_mid = as_t(np.stack([np.stack([np.asarray(w) for w in ws[1:-1]])
                                   for ws in per_replica], axis=1))
        else:
            w_mid = torch.zeros(0, len(per_replica), n, n, device=device, dtype=dtype)
        return Weights(w_in, w_mid, w_out)


@dataclass
class Residuals:
    """What one pass over the network gives: residuals, output and rates phi(h)."""
    r: torch.Tensor      # [H, R, B, N]
    y_hat: torch.Tensor  # [R, B, O]
    a: torch.Tensor      # [H, R, B, N], phi(h)


def rms_norm(t: torch.Tensor) -> torch.Tensor:
    """RMS over the batch of each sample's L2 norm: [..., B, N] -> [...]."""
    return t.square().sum(-1).mean(-1).sqrt()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[K, R, ...] -> [K*R, ...] (a view: the blocks are contiguous)."""
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


# ---------------------------------------------------------------------------- structure
class Network:
    """Sizes, scales and activation on one device/dtype; pure functions of (weights, state)."""

    def __init__(self, input_dim: int, width: int, depth: int, output_dim: int,
                 activation: str, device, dtype):
        if depth < 2:
            raise ValueError("a network needs at least 2 weight matrices (depth >= 2)")
        if activation not in ("linear", "tanh", "relu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.input_dim, self.width, self.depth, self.output_dim = input_dim, width, depth, \
            output_dim
        self.s_in, self.s_mid, self.s_out = layer_scales(input_dim, width, depth)
        self.activation = activation
        self.device, self.dtype = torch.device(device), dtype

    @staticmethod
    def from_config(cfg: Config, device, dtype) -> "Network":
        net = cfg.network
        return Network(net.input_dim, net.width, net.depth, net.output_dim, net.activation,
                       device, dtype)

    @property
    def n_hidden(self) -> int:
        return self.depth - 1

    # ---------------------------------------------------------------------- activation
    def phi(self, h: torch.Tensor) -> torch.Tensor:
        return phi(self.activation, h)

    def dphi(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        """phi'(h) given a = phi(h); None for linear (multiplying by 1 is skipped)."""
        return dphi(self.activation, h, a)

    # ---------------------------------------------------------------------- passes
    def input_drive(self, w: Weights, x: torch.Tensor) -> torch.Tensor:
        """pred_1 = s_in W_1 x, [R, B, N]: constant while the weights and batch are."""
        return self.s_in * torch.bmm(x, w.w_in.transpose(1, 2))

    def output(self, w: Weights, a: torch.Tensor) -> torch.Tensor:
        """y_hat = s_out W_L phi(h_H), [R, B, O]."""
        return self.s_out * torch.bmm(a[-1], w.w_out.transpose(1, 2))

    def feedforward(self, w: Weights, x: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """h_l = pred_l for all hidden layers (r = 0), [H, R, B, N] (into ``out`` if given).
        Sequential by nature (one small product per layer): it runs once per presentation,
        never per step."""
        h = out if out is not None else torch.empty(
            self.n_hidden, *x.shape[:2], self.width, device=x.device, dtype=x.dtype)
        torch.bmm(x, w.w_in.transpose(1, 2), out=h[0]).mul_(self.s_in)
        for l in range(1, self.n_hidden):
            torch.baddbmm(h[l - 1], self.phi(h[l - 1]), w.w_mid[l - 1].transpose(1, 2),
                          alpha=self.s_mid, out=h[l])
        return h

    def forward_output(self, w: Weights, x: torch.Tensor) -> torch.Tensor:
        """y_hat [R, b, O] of the feed-forward pass without keeping the hidden layers: two
        buffers, reused layer after layer (evaluating a whole split allocates nothing per
        layer). The same kernels as :meth:`feedforward`, so the same numbers."""
        h = self.input_drive(w, x)
        if self.n_hidden > 1:
            a, nxt = torch.empty_like(h), torch.empty_like(h)
            for l in range(self.n_hidden - 1):
                phi_into(self.activation, h, a)
                torch.baddbmm(h, a, w.w_mid[l].transpose(1, 2), alpha=self.s_mid, out=nxt)
                h, nxt = nxt, h
        return self.output(w, self.phi(h)[None])

    def mid_predictions(self, w: Weights, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """pred_{2..H} = h_{1..H-1} + s_mid phi(h_{1..H-1}) W^T: one batched kernel,
        [H-1, R, B, N]."""
        out = torch.baddbmm(_flat(h[:-1]), _flat(a[:-1]), _flat(w.w_mid).transpose(1, 2),
                            alpha=self.s_mid)
        return out.view(h.shape[0] - 1, *h.shape[1:])

    def residuals(self, w: Weights, h: torch.Tensor, drive: torch.Tensor) -> Residuals:
        a = self.phi(h)
        r = torch.empty_like(h)
        torch.sub(h[0], drive, out=r[0])
        if self.n_hidden > 1:
            torch.sub(h[1:], self.mid_predictions(w, h, a), out=r[1:])
        return Residuals(r, self.output(w, a), a)

    def predictions(self, w: Weights, h: torch.Tensor, drive: torch.Tensor):
        """(pred [H, R, B, N], y_hat [R, B, O]): what each layer receives from below."""
        a = self.phi(h)
        pred = torch.empty_like(h)
        pred[0] = drive
        if self.n_hidden > 1:
            pred[1:] = self.mid_predictions(w, h, a)
        return pred, self.output(w, a)

    def constraint_jvp(self, w: Weights, v: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        """A v, with A = dr/dh the constraint Jacobian (unit lower block-bidiagonal):
        (A v)_1 = v_1,  (A v)_l = v_l - J_l v_{l-1},  J_l = I + s_mid W_l diag phi'(h_{l-1})."""
        out = v.clone()
        if self.n_hidden > 1:
            dv = v[:-1] if d is None else d[:-1] * v[:-1]
            fwd = torch.bmm(_flat(dv), _flat(w.w_mid).transpose(1, 2)).view_as(v[1:])
            out[1:] -= v[:-1] + self.s_mid * fwd
        return out

    def constraint_vjp(self, w: Weights, u: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        """A^T u: (A^T u)_l = u_l - J_{l+1}^T u_{l+1} (the credit a layer sends down)."""
        out = u.clone()
        if self.n_hidden > 1:
            back = self.s_mid * torch.bmm(_flat(u[1:]), _flat(w.w_mid)).view_as(u[1:])
            if d is not None:
                back = back * d[:-1]
            out[:-1] -= u[1:] + back
        return out

    def activity_gradient(self, w: Weights, h, a, y_hat, g, y) -> torch.Tensor:
        """dL/dh for composite credit g = rho*err + lam (spec section 2), per sample:
        A^T g plus the output term s_out phi'(h_H) W_L^T (y_hat - y) on the last layer."""
        d = self.dphi(h, a)
        grad = self.constraint_vjp(w, g, d)
        out_err = torch.bmm(y_hat - y, w.w_out)
        grad[-1] += self.s_out * (out_err if d is None else out_err * d[-1])
        return grad

    def feedback(self, w: Weights, h, a, y_hat, g, y) -> torch.Tensor:
        """Credit each layer receives from above, g - dL/dh: J_{l+1}^T g_{l+1} (l < H) and
        -s_out phi'(h_H) W_L^T (y_hat - y) (what the Brian2 network_operation writes into fb)."""
        return g - self.activity_gradient(w, h, a, y_hat, g, y)

    def weight_gradients(self, a: torch.Tensor, y_hat: torch.Tensor, g: torch.Tensor,
                         x: torch.Tensor, y: torch.Tensor) -> Weights:
        """dL/dW (batch means, loss-gradient sign) from the local read-out: credit x
        presynaptic rate. a = phi(h) [H, R, B, N], g [H, R, B, N], x [R, B, D], y [R, B, O]."""
        b = x.shape[1]
        g_in = torch.bmm(g[0].transpose(1, 2), x).mul_(-self.s_in / b)
        g_mid = torch.bmm(_flat(g[1:]).transpose(1, 2), _flat(a[:-1])).mul_(-self.s_mid / b)
        g_out = torch.bmm((y_hat - y).transpose(1, 2), a[-1]).mul_(self.s_out / b)
        return Weights(g_in, g_mid.view(g.shape[0] - 1, g.shape[1], self.width, self.width),
                       g_out)


def phi(activation: str, h: torch.Tensor) -> torch.Tensor:
    """phi(h) for an activation name (a new tensor)."""
    if activation == "tanh":
        return torch.tanh(h)
    if activation == "relu":
        return torch.relu(h)
    return h


def dphi(activation: str, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
    """phi'(h) given a = phi(h); None for linear (multiplying by 1 is skipped)."""
    if activation == "tanh":
        return 1.0 - a * a
    if activation == "relu":
        return (h > 0).to(h.dtype)
    return None


def phi_into(activation: str, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = phi(h) in place."""
    if activation == "relu":
        return torch.clamp(h, min=0, out=out)
    if activation == "tanh":
        return torch.tanh(h, out=out)
    return out.copy_(h)


def layer_scales(input_dim: int, width: int, depth: int) -> tuple[float, float, float]:
    """(s_in, s_mid, s_out) = (1/sqrt(D), 1/sqrt(N L), 1/N): the mean-field scaling."""
    return 1.0 / math.sqrt(input_dim), 1.0 / math.sqrt(width * depth), 1.0 / width
