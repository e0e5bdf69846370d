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

import contextlib
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctpc.config.identity import digest_stamp, hash_file
from ctpc.config.schema import Config, ConfigError, layer_shapes


# ---------------------------------------------------------------------------- initial weights
def init_weights(cfg: Config, from_file=None) -> list[np.ndarray]:
    """Unscaled W_1..W_L of one network: from ``network.weights`` or N(0, 1) from ``seed``
    (float64 numpy, so every backend, device and replica starts from bit-identical weights).
    ``from_file``: what :func:`check_weights_file` returned for ``network.weights`` when the
    config was resolved (``Resolved.found.weights``), used instead of reading the file again."""
    shapes = layer_shapes(cfg)
    if cfg.network.weights is not None:
        if from_file is None:
            from_file = check_weights_file(cfg.network.weights, shapes, cfg.dtype,
                                           bias_shapes=bias_shapes(cfg))
        return list(from_file[:len(shapes)])
    rng = np.random.default_rng(cfg.seed)
    return [rng.standard_normal(s) for s in shapes]


def bias_shapes(cfg: Config) -> list[tuple[int]] | None:
    """Shapes of b1 .. bL with ``network.bias`` (N, ..., N, O), else None."""
    if not cfg.network.bias:
        return None
    return [(s[0],) for s in layer_shapes(cfg)]


def init_biases(cfg: Config, from_file=None) -> list[np.ndarray] | None:
    """b_1..b_L of one network with ``network.bias`` (else None): zeros, or ``b1 .. bL`` from
    ``network.weights`` (``from_file``: what :func:`check_weights_file` returned, as for
    :func:`init_weights`)."""
    shapes = bias_shapes(cfg)
    if shapes is None:
        return None
    if cfg.network.weights is not None:
        if from_file is None:
            from_file = check_weights_file(cfg.network.weights, layer_shapes(cfg), cfg.dtype,
                                           bias_shapes=shapes)
        return list(from_file[len(shapes):])
    return [np.zeros(s) for s in shapes]


FLOAT32_MAX = float(np.finfo(np.float32).max)
WEIGHT_KINDS = {"b": "bool", "i": "int", "u": "unsigned int", "f": "float"}


def check_weights_file(path: str | Path, shapes: list[tuple[int, int]],
                       dtype: str | None = None, digests: dict | None = None,
                       bias_shapes: list[tuple[int]] | None = None) -> list[np.ndarray]:
    """Read ``w1 .. wL`` from an .npz and check names, shapes and values (ConfigError): real
    numbers only (complex, strings, objects are refused, never cast), finite, and with
    ``dtype`` 'float32', within float32's range. With ``bias_shapes`` (``network.bias``) the
    file may also hold ``b1 .. bL`` (all of them, or none: zeros); the list returned is then
    ``[w1 .. wL, b1 .. bL]``. The file is opened once; with ``digests`` (a
    digest cache of :func:`ctpc.config.identity.input_digests`) its SHA-256 is taken from that
    same opening and stored there."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"network.weights: {str(path)!r} {what}; expected an .npz file with "
                          f"arrays w1 .. w{len(shapes)}")
    with contextlib.ExitStack() as opened:
        try:
            f = opened.enter_context(open(path, "rb"))
            if digests is not None:
                h = hashlib.sha256()
                hash_file(h, path, f)
                digests[digest_stamp([path])] = h.hexdigest()
            arrays = np.load(f, allow_pickle=False)
            files = list(arrays.files)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
            raise ConfigError(f"network.weights: cannot read {str(path)!r} as .npz ({exc})") \
                from None
        return _checked_weights(path, shapes, dtype, arrays, files, bias_shapes)


def _checked_weights(path: Path, shapes, dtype, arrays, files, bias_shapes=None) -> list[np.ndarray]:
    names = [f"w{i + 1}" for i in range(len(shapes))]
    biases = [f"b{i + 1}" for i in range(len(shapes))]
    expected = list(names)
    zeros = []
    problems = []
    if bias_shapes is not None:
        held = [k for k in biases if k in files]
        if held and len(held) < len(biases):
            problems.append(f"holds {held} but not {[k for k in biases if k not in files]}: "
                            "give every bias b1 .. bL, or none (zeros)")
        if held:
            expected += biases
            shapes = list(shapes) + list(bias_shapes)
        else:
            zeros = [np.zeros(s) for s in bias_shapes]
    elif any(k in files for k in biases):
        problems.append(f"holds biases {[k for k in biases if k in files]} but network.bias is "
                        "false; set network.bias: true to use them")
        expected += [k for k in biases if k in files]
        shapes = list(shapes) + [None] * (len(expected) - len(names))
    missing = [k for k in expected if k not in files]
    extra = [k for k in files if k not in expected]
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
        if shape is None:
            continue
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
            f"(depth {len(names)}, shapes [out, in] {shapes[:len(names)]}): "
            + "; ".join(problems))
    return out + zeros


# ---------------------------------------------------------------------------- weights
# The fields of Weights in order, and the axis of each that holds the replicas.
WEIGHT_FIELDS = ("w_in", "w_mid", "w_out")
BIAS_FIELDS = ("b_hid", "b_out")
REPLICA_AXIS = {"w_in": 0, "w_mid": 1, "w_out": 0, "b_hid": 1, "b_out": 0}


@dataclass(frozen=True)
class Weights:
    """The parameters of R networks (also used for their *gradients*, same layout).

    w_in [R, N, D] (W_1), w_mid [H-1, R, N, N] (W_2 .. W_{L-1}), w_out [R, O, N] (W_L); with
    ``network.bias``, b_hid [H, R, 1, N] (b_1 .. b_{L-1}) and b_out [R, 1, O] (b_L), else None.
    Every consumer goes through :attr:`tensors`, :attr:`replica_axes` and the per-layer
    reductions below, so a parameter added here reaches the optimiser, checkpoints, the
    divergence guard and the BP alignment without edits there."""
    w_in: torch.Tensor
    w_mid: torch.Tensor
    w_out: torch.Tensor
    b_hid: torch.Tensor | None = None
    b_out: torch.Tensor | None = None

    @property
    def has_bias(self) -> bool:
        return self.b_hid is not None

    @property
    def fields(self) -> tuple[str, ...]:
        return WEIGHT_FIELDS + (BIAS_FIELDS if self.has_bias else ())

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every parameter tensor, weights first: what an optimiser steps."""
        return tuple(getattr(self, f) for f in self.fields)

    @property
    def replica_axes(self) -> tuple[int, ...]:
        """The replica axis of each of :attr:`tensors`."""
        return tuple(REPLICA_AXIS[f] for f in self.fields)

    @property
    def replicas(self) -> int:
        return self.w_in.shape[0]

    def like(self, tensors) -> "Weights":
        """New Weights with these tensors, in the order of :attr:`tensors`."""
        return Weights(**dict(zip(self.fields, tensors)))

    def matrices(self, replica: int = 0) -> list[torch.Tensor]:
        """[W_1, ..., W_L] of one replica, each [out, in] (views)."""
        return [self.w_in[replica], *self.w_mid[:, replica].unbind(0), self.w_out[replica]]

    def biases(self, replica: int = 0) -> list[torch.Tensor] | None:
        """[b_1, ..., b_L] of one replica ([N] .. [N], [O]; views), or None without biases."""
        if not self.has_bias:
            return None
        return [*self.b_hid[:, replica, 0].unbind(0), self.b_out[replica, 0]]

    def arrays(self, replica: int = 0) -> dict[str, np.ndarray]:
        """One replica as the weights file holds it: w1 .. wL, and b1 .. bL with biases."""
        out = {f"w{i + 1}": m.detach().cpu().numpy() for i, m in enumerate(self.matrices(replica))}
        for i, b in enumerate(self.biases(replica) or []):
            out[f"b{i + 1}"] = b.detach().cpu().numpy()
        return out

    def map(self, fn) -> "Weights":
        return self.like(fn(t) for t in self.tensors)

    def layer_blocks(self) -> list[tuple[torch.Tensor, ...]]:
        """The parameters by kind, each block flattened to [rows, R, (K,) n] so that a kind's
        rows, concatenated, are the L layers: [(W_1, W_2..W_{L-1}, W_L)], and with biases
        also (b_1..b_{L-1}, b_L). A per-layer reduction reduces each block over n, concatenates
        a kind's rows and sums over the kinds. (An estimate may carry a slot axis K after the
        replica axis.)"""
        kinds = [(self.w_in.flatten(-2)[None], self.w_mid.flatten(-2),
                  self.w_out.flatten(-2)[None])]
        if self.has_bias:
            kinds.append((self.b_hid.flatten(-2), self.b_out.flatten(-2)[None]))
        return kinds

    def layer_dot(self, other: "Weights") -> torch.Tensor:
        """[L, R] sum over each layer's parameters (W_l, and b_l with biases) of self * other."""
        return sum(torch.cat([(a * b).sum(-1) for a, b in zip(mine, theirs)])
                   for mine, theirs in zip(self.layer_blocks(), other.layer_blocks()))

    def norm(self) -> torch.Tensor:
        """[R] Euclidean norm over all parameters of each replica."""
        return self.layer_dot(self).sum(0).sqrt()

    @staticmethod
    def stack(per_replica: list[list[np.ndarray]], device, dtype,
              biases: list[list[np.ndarray]] | None = None) -> "Weights":
        """Weights from R lists [W_1 .. W_L] (numpy or torch, [out, in] each) and, with
        biases, R lists [b_1 .. b_L] ([N] .. [N], [O])."""
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device, dtype=dtype)
        w_in = as_t(np.stack([np.asarray(ws[0]) for ws in per_replica]))
        w_out = as_t(np.stack([np.asarray(ws[-1]) for ws in per_replica]))
        n, depth = w_in.shape[1], len(per_replica[0])
        if depth > 2:
            w_mid = as_t(np.stack([np.stack([np.asarray(w) for w in ws[1:-1]])
                                   for ws in per_replica], axis=1))
        else:
            w_mid = torch.zeros(0, len(per_replica), n, n, device=device, dtype=dtype)
        if biases is None:
            return Weights(w_in, w_mid, w_out)
        b_hid = as_t(np.stack([np.stack([np.asarray(b) for b in bs[:-1]]) for bs in biases],
                              axis=1))[:, :, None, :]
        b_out = as_t(np.stack([np.asarray(bs[-1]) for bs in biases]))[:, None, :]
        return Weights(w_in, w_mid, w_out, b_hid, b_out)


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
                 activation: str, device, dtype, bias: bool = False):
        if depth < 2:
            raise ValueError("a network needs at least 2 weight matrices (depth >= 2)")
        if activation not in ("linear", "tanh", "relu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.input_dim, self.width, self.depth, self.output_dim = input_dim, width, depth, \
            output_dim
        self.s_in, self.s_mid, self.s_out = layer_scales(input_dim, width, depth)
        self.activation = activation
        self.bias = bool(bias)
        self.device, self.dtype = torch.device(device), dtype

    @staticmethod
    def from_config(cfg: Config, device, dtype) -> "Network":
        net = cfg.network
        return Network(net.input_dim, net.width, net.depth, net.output_dim, net.activation,
                       device, dtype, net.bias)

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
        """pred_1 = s_in W_1 x (+ b_1), [R, B, N]: constant while the weights and batch are."""
        return input_prediction(x, w.w_in.transpose(1, 2), self.s_in,
                                None if w.b_hid is None else w.b_hid[0])

    def output(self, w: Weights, a: torch.Tensor) -> torch.Tensor:
        """y_hat = s_out W_L phi(h_H) (+ b_L), [R, B, O]."""
        return output_prediction(a[-1], w.w_out.transpose(1, 2), self.s_out, w.b_out)

    def feedforward(self, w: Weights, x: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """h_l = pred_l for all hidden layers (r = 0), [H, R, B, N] (into ``out`` if given).
        Sequential by nature (one small product per layer): it runs once per presentation,
        never per step."""
        h = out if out is not None else torch.empty(
            self.n_hidden, *x.shape[:2], self.width, device=x.device, dtype=x.dtype)
        h[0] = self.input_drive(w, x)
        for l in range(1, self.n_hidden):
            layer_prediction(h[l - 1], self.phi(h[l - 1]), w.w_mid[l - 1].transpose(1, 2),
                             self.s_mid, _bias(w.b_hid, l), out=h[l])
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
                layer_prediction(h, a, w.w_mid[l].transpose(1, 2), self.s_mid,
                                 _bias(w.b_hid, l + 1), out=nxt)
                h, nxt = nxt, h
        return self.output(w, self.phi(h)[None])

    def mid_predictions(self, w: Weights, h: torch.Tensor, a: torch.Tensor,
                        out: torch.Tensor | None = None) -> torch.Tensor:
        """pred_{2..H} = h_{1..H-1} + s_mid phi(h_{1..H-1}) W^T (+ b): every layer in one
        batched :func:`layer_prediction`, [H-1, R, B, N] (into ``out``, same shape, if given)."""
        flat_bias = None if w.b_hid is None else _flat(w.b_hid[1:])
        pred = layer_prediction(_flat(h[:-1]), _flat(a[:-1]), _flat(w.w_mid).transpose(1, 2),
                                self.s_mid, flat_bias,
                                out=None if out is None else _flat(out))
        return pred.view(h.shape[0] - 1, *h.shape[1:])

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
        return weight_readout(g, a, y_hat - y, x, (self.s_in, self.s_mid, self.s_out),
                              self.bias)


# ---------------------------------------------------------------------------- the formulas
# Written once; every path computes the network pass, the loss, the energy and the weight
# read-out with these. The compiled programs' lanes layout [.., N, B] restates them for speed
# right below ("lanes"), and tests/test_formulas.py compares both on random inputs.

def input_prediction(x: torch.Tensor, w_in_t: torch.Tensor, s_in: float,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """pred_1 = s_in W_1 x (+ b_1): x [R, B, D], w_in_t = W_1^T [R, D, N] -> [R, B, N]."""
    pred = torch.bmm(x, w_in_t).mul_(s_in)
    return pred if bias is None else pred.add_(bias)


def layer_prediction(h_below: torch.Tensor, a_below: torch.Tensor, w_t: torch.Tensor,
                     s_mid: float, bias: torch.Tensor | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """pred_l = h_{l-1} + s_mid phi(h_{l-1}) W_l^T (+ b_l), the residual layer (spec section
    1): h_below, a_below = phi(h_below) [K, B, N], w_t = W_l^T [K, N, N], bias [K, 1, N]
    (K stacked layers or replicas) -> [K, B, N], into ``out`` if given."""
    pred = torch.baddbmm(h_below, a_below, w_t, alpha=s_mid, out=out)
    return pred if bias is None else pred.add_(bias)


def output_prediction(a_top: torch.Tensor, w_out_t: torch.Tensor, s_out: float,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """y_hat = s_out W_L phi(h_H) (+ b_L): a_top [R, B, N], w_out_t [R, N, O] -> [R, B, O]."""
    pred = torch.bmm(a_top, w_out_t).mul_(s_out)
    return pred if bias is None else pred.add_(bias)


def output_error(a_top: torch.Tensor, w_out_t: torch.Tensor, y: torch.Tensor, s_out: float,
                 bias: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """y_hat - y from :func:`output_prediction`'s formula in one fused product, [R, B, O]
    (into ``out`` if given): what the solvers carry."""
    err = torch.baddbmm(y, a_top, w_out_t, beta=-1, alpha=s_out, out=out)
    return err if bias is None else err.add_(bias)


def loss(out_err: torch.Tensor, out_axis: int = -1) -> torch.Tensor:
    """l = 1/2 |y_hat - y|^2, mean over the batch: out_err = y_hat - y with its output axis
    ``out_axis`` and its batch axis last but that ([..., B, O]; the lanes layout [R, O, B]
    has out_axis=-2) -> [...]."""
    return 0.5 * out_err.square().sum(out_axis).mean(-1)


def energy(loss_value: torch.Tensor, lam_r: torch.Tensor, r_sq: torch.Tensor, rho,
           batch: int) -> torch.Tensor:
    """L_rho = l + (sum lam . r + rho/2 sum |r|^2) / B (spec section 2; PC: lam = 0 gives F),
    from the loss and the two sums over layers, samples and units (each [R], or any shape
    that broadcasts with ``rho``)."""
    return loss_value + (lam_r + 0.5 * rho * r_sq) / batch


def weight_readout(g: torch.Tensor, a: torch.Tensor, out_err: torch.Tensor, x: torch.Tensor,
                   scales: tuple[float, float, float], bias: bool) -> "Weights":
    """dL/dW (and dL/db) of every layer from the local read-out, batch means, loss-gradient
    sign: credit x presynaptic rate. g = rho e + lam, a = phi(h) [H, R, B, N], out_err =
    y_hat - y [R, B, O], x [R, B, D]; scales (s_in, s_mid, s_out).

        dL/dW_1 = -s_in <g_1 x^T>,  dL/dW_l = -s_mid <g_l phi(h_{l-1})^T>,
        dL/dW_L = s_out <(y_hat - y) phi(h_H)^T>,  dL/db_l = -<g_l>,  dL/db_L = <y_hat - y>"""
    s_in, s_mid, s_out = scales
    b, n = x.shape[1], g.shape[-1]
    g_in = torch.bmm(g[0].transpose(1, 2), x).mul_(-s_in / b)
    g_mid = torch.bmm(_flat(g[1:]).transpose(1, 2), _flat(a[:-1])).mul_(-s_mid / b)
    g_out = torch.bmm(out_err.transpose(1, 2), a[-1]).mul_(s_out / b)
    w = Weights(g_in, g_mid.view(g.shape[0] - 1, g.shape[1], n, n), g_out)
    if not bias:
        return w
    return Weights(*w.tensors, g.mean(-2, keepdim=True).neg_(), out_err.mean(-2, keepdim=True))


def weight_readout_slots(g: torch.Tensor, a: torch.Tensor, out_err: torch.Tensor,
                         x: torch.Tensor, k: int, scales: tuple[float, float, float],
                         bias: bool, scratch=None) -> "Weights":
    """:func:`weight_readout` of k slots at once, restated for speed (the recorder reads out a
    chunk of recorded steps per call): g, a [H, R, k*B, N] hold k groups of B samples
    (slot-major), out_err [R, k, B, O], x [R, B, D] shared by every slot. The k slots' W_1
    credit is one [k N, B] operand against the shared input (one product, no copy of x).
    Returns each tensor with a slot axis after its replica axis (w_in [R, k, N, D], w_mid
    [H-1, R, k, N, N], w_out [R, k, O, N], b_hid [H, R, k, 1, N], b_out [R, k, 1, O]).
    ``scratch(name, like, *shape)``: a buffer to write into (reused by the caller), else new."""
    s_in, s_mid, s_out = scales
    H, R, kB, N = g.shape
    B, D, O = kB // k, x.shape[-1], out_err.shape[-1]
    buf = scratch or (lambda name, like, *shape: like.new_empty(shape))
    per_slot = lambda t: t.unflatten(-2, (k, B))
    g0 = buf("g0", g, R, k * N, B)
    g0.view(R, k, N, B).copy_(per_slot(g[0]).transpose(-1, -2))
    g_in = torch.bmm(g0, x, out=buf("g_in", g, R, k * N, D))
    hi, lo = per_slot(g[1:]).flatten(0, 2), per_slot(a[:-1]).flatten(0, 2)
    g_mid = torch.bmm(hi.transpose(1, 2), lo, out=buf("g_mid", g, (H - 1) * R * k, N, N))
    g_out = torch.bmm(out_err.flatten(0, 1).transpose(1, 2), per_slot(a[-1]).flatten(0, 1),
                      out=buf("g_out", g, R * k, O, N))
    w = Weights(g_in.mul_(-s_in / B).view(R, k, N, D),
                g_mid.mul_(-s_mid / B).view(H - 1, R, k, N, N),
                g_out.mul_(s_out / B).view(R, k, O, N))
    if not bias:
        return w
    return Weights(*w.tensors, per_slot(g).mean(-2, keepdim=True).neg_(),
                   out_err.mean(-2, keepdim=True))


def _bias(b_hid: torch.Tensor | None, layer: int) -> torch.Tensor | None:
    """b_{layer+1} [R, 1, N] of hidden layer ``layer`` (0-based), or None."""
    return None if b_hid is None else b_hid[layer]


# -------------------------------------------------- the same formulas in the lanes layout
# The compiled programs (core/compiled.py) hold activities as [H, R, N, B], the batch on the
# vector lanes, and write small contractions out as multiply-adds that inductor fuses.

# contractions over at most this many terms are unrolled (above: batched products)
UNROLL_MAX = 16


def lanes_contract(w: torch.Tensor, v: torch.Tensor, transpose: bool) -> torch.Tensor:
    """out[..., j, b] = sum_k M[..., j, k] v[..., k, b] with M = w, or w^T if ``transpose``.
    w [..., J, K] (or [..., K, J]), v [..., K, B]."""
    k_dim = v.shape[-2]
    if k_dim > UNROLL_MAX:
        return torch.matmul(w.transpose(-1, -2) if transpose else w, v)
    out = None
    for k in range(k_dim):
        col = w[..., k, :] if transpose else w[..., :, k]
        term = col[..., :, None] * v[..., k:k + 1, :]
        out = term if out is None else out + term
    return out


def lanes_outer(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_b u[..., j, b] v[..., k, b] -> [..., J, K] (the read-out's products over the batch)."""
    if u.shape[-2] > UNROLL_MAX or v.shape[-2] > UNROLL_MAX:
        return torch.matmul(u, v.transpose(-1, -2))
    return (u[..., :, None, :] * v[..., None, :, :]).sum(-1)


def lanes_input_prediction(w_in, x_t, s_in: float, bias_t=None):
    """:func:`input_prediction` in lanes: w_in [R, N, D], x_t [R, D, B], bias_t [R, N, 1]."""
    pred = s_in * torch.matmul(w_in, x_t)
    return pred if bias_t is None else pred + bias_t


def lanes_layer_prediction(h_below, a_below, w, s_mid: float, bias_t=None):
    """:func:`layer_prediction` in lanes: h_below, a_below [..., N, B], w [..., N, N],
    bias_t [..., N, 1]."""
    pred = h_below + s_mid * lanes_contract(w, a_below, False)
    return pred if bias_t is None else pred + bias_t


def lanes_output_error(a_top, w_out, y_t, s_out: float, bias_t=None):
    """:func:`output_error` in lanes: a_top [R, N, B], w_out [R, O, N], y_t [R, O, B],
    bias_t [R, O, 1]."""
    err = s_out * lanes_contract(w_out, a_top, False) - y_t
    return err if bias_t is None else err + bias_t


def lanes_weight_readout(g, a, out_err, x, scales: tuple[float, float, float], bias: bool):
    """:func:`weight_readout` in lanes: g, a [H, R, N, B], out_err [R, O, B], x [R, B, D];
    returns the tensors of :class:`Weights` in its layout."""
    s_in, s_mid, s_out = scales
    b = x.shape[1]
    g_in = torch.matmul(g[0], x) * (-s_in / b)
    g_mid = lanes_outer(g[1:], a[:-1]) * (-s_mid / b)
    g_out = lanes_outer(out_err, a[-1]) * (s_out / b)
    if not bias:
        return g_in, g_mid, g_out
    return (g_in, g_mid, g_out, -g.mean(-1, keepdim=True).transpose(-1, -2),
            out_err.mean(-1, keepdim=True).transpose(-1, -2))


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
