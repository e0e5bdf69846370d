"""Backpropagation through the same network and batch, by autograd: the ground truth every
credit estimate is compared with."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .network import Network


@dataclass
class BPReference:
    grads: list[torch.Tensor]   # dl/dW_1 .. dl/dW_L, batch-mean loss, [out, in]
    adjoints: torch.Tensor      # [H, B, N] per-sample dl_b/dh_l at the feed-forward point
    loss: float                 # l = 1/2 mean_b ||y_hat - y||^2 at the feed-forward point


def bp_reference(net: Network, x: torch.Tensor, y: torch.Tensor) -> BPReference:
    """Exact BP gradients (autograd through a plain layer-by-layer forward pass)."""
    with torch.enable_grad():
        w_in = net.w_in.detach().clone().requires_grad_()
        w_mid = [w.detach().clone().requires_grad_() for w in net.w_mid]
        w_out = net.w_out.detach().clone().requires_grad_()
        hs = [net.s_in * (x @ w_in.T)]
        for w in w_mid:
            hs.append(hs[-1] + net.s_mid * (net.phi(hs[-1]) @ w.T))
        for h in hs:
            h.retain_grad()
        y_hat = net.s_out * (net.phi(hs[-1]) @ w_out.T)
        loss = 0.5 * ((y_hat - y) ** 2).sum(dim=1).mean()
        loss.backward()
    grads = [w_in.grad] + [w.grad for w in w_mid] + [w_out.grad]
    # hs[l].grad is d(mean loss)/dh; a sample's own adjoint is B times that.
    adjoints = torch.stack([h.grad for h in hs]) * x.shape[0]
    return BPReference([g.detach() for g in grads], adjoints.detach(), float(loss.detach()))
