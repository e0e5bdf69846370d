"""What training measures at its evaluation points: accuracy, MSE and cross-entropy over whole
splits, and the alignment of a rule's weight update with BP on a fixed probe batch."""
from __future__ import annotations

import torch

from ctpc.core.network import Network, Weights, loss
from ctpc.sim.recording import alignment
from ctpc.core.reference import bp_reference


def evaluate(net: Network, w: Weights, x: torch.Tensor, labels: torch.Tensor,
             y: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """Accuracy (argmax), MSE (1/2 |y_hat - y|^2, mean over examples) and cross-entropy of
    softmax(y_hat), each [R], over a whole split x [n, D] (shared by the R replicas),
    labels [n], one-hot y [n, O]; ``chunk`` examples per forward pass.

    A replica with any non-finite output (NaN or inf, e.g. a float32 overflow) gets NaN
    accuracy: argmax of such outputs is no prediction, and a number would pass for a result."""
    R, n = w.replicas, x.shape[0]
    hits = torch.zeros(R, device=x.device, dtype=x.dtype)
    mse = torch.zeros_like(hits)
    ce = torch.zeros_like(hits)
    finite = torch.ones(R, device=x.device, dtype=torch.bool)
    for start in range(0, n, chunk):
        xb = x[start:start + chunk].expand(R, -1, -1)
        y_hat = net.forward_output(w, xb)                            # [R, b, O]
        lb, yb = labels[start:start + chunk], y[start:start + chunk]
        finite &= torch.isfinite(y_hat).flatten(1).all(-1)
        hits += (y_hat.argmax(-1) == lb).sum(-1)
        mse += loss(y_hat - yb) * y_hat.shape[-2]        # summed over the chunk
        ce += torch.nn.functional.cross_entropy(
            y_hat.reshape(-1, y_hat.shape[-1]), lb.repeat(R), reduction="none"
        ).view(R, -1).sum(-1)
    acc = torch.where(finite, hits / n, torch.full_like(hits, float("nan")))
    return {"acc": acc, "mse": mse / n, "ce": ce / n}


def probe_alignment(rule, net: Network, w: Weights, x: torch.Tensor, y: torch.Tensor):
    """(cos [L, R], relerr [L, R], global cos [R]) of ``rule``'s weight update on the probe
    batch x [R, B, D] against BP's gradient on the same batch and weights."""
    grads, _ = rule(w, x, y)
    bp = bp_reference(net, w, x, y).grads
    cos, rel = alignment(grads, bp)
    dot = grads.layer_dot(bp).sum(0)                                   # [R]
    norm = grads.norm() * bp.norm()
    cos_global = torch.where(norm > 0, dot / norm, torch.zeros_like(dot))
    return cos, rel, cos_global
