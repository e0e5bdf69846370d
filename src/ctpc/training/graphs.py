"""The whole training update as one CUDA graph (``training.cuda_graph: true``).

An update is hundreds of small kernels (T inference steps of ~15 each, the read-out, Adam); on a
GPU the small cells are bound by launching them, not by arithmetic. The update is captured once
as a CUDA graph with static buffers and replayed for every batch: one launch per update.

What is captured is exactly :meth:`ctpc.training.loop.Trainer.update_body`, the function the
eager loop runs (the rule, the optimiser step, the statistics). Around each replay, outside the
graph: the batch is gathered and copied into the static input buffers, and the statistics are
copied from their static buffers into the history (a few small copies; still no host sync).
Everything inside is sync-free by construction: the inference runs without its divergence check
(training checks at its sync points), the optimiser is created with ``capturable=True``, and the
Gauss-Seidel step updates preallocated buffers in place.

Capturing needs warm-up runs (CUDA's rule: lazily created state such as cuBLAS workspaces and
Adam's moments must exist before capture). They run on a side stream on the real batch; the
weights and the optimiser state are saved before and restored after, so the trajectory is the
eager one, update for update (``sims/gpu_check.py`` checks that on the GPU).

Status: prepared and checked on the CPU only as far as the CPU allows (the captured body equals
the eager update, tests/test_cuda.py); no GPU was lent to the session that wrote it.
"""
from __future__ import annotations

import torch

from ctpc.config.schema import ConfigError

WARMUP = 3


class GraphedUpdate:
    """One CUDA graph replaying ``trainer.update_body(x, y)``; call with a batch."""

    def __init__(self, trainer, x: torch.Tensor, y: torch.Tensor):
        if trainer.device.type != "cuda":
            raise ConfigError("training.cuda_graph: true needs a CUDA device (device: cuda or "
                              "auto on a machine with a GPU)")
        self.trainer = trainer
        self.x, self.y = x.clone(), y.clone()             # the static input buffers
        weights = [t.detach().clone() for t in trainer.weights.tensors]
        before = _optimizer_state(trainer.optimizer)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                trainer.update_body(self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.stats = trainer.update_body(self.x, self.y)
        with torch.no_grad():                               # undo the warm-up updates
            for t, saved in zip(trainer.weights.tensors, weights):
                t.copy_(saved)
            _restore_in_place(trainer.optimizer, before)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Replay the update on batch (x, y); returns the static statistics buffers in a new
        dict, so a caller that replaces an entry (frozen replicas) cannot detach the graph's
        own output buffer from later replays."""
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return dict(self.stats)


def _optimizer_state(opt) -> dict:
    """Copies of the optimiser's per-parameter state tensors (empty before its first step)."""
    return {i: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
            for i, p in enumerate(opt.param_groups[0]["params"]) if p in opt.state}


def _restore_in_place(opt, saved: dict) -> None:
    """Put the state back *in place*: the graph holds the addresses of these tensors. A state
    that did not exist before the warm-up (a fresh run) is zeroed, which is what the first step
    starts from (Adam's moments and step count; SGD's momentum buffer then equals the gradient,
    as on its first step)."""
    for i, p in enumerate(opt.param_groups[0]["params"]):
        for k, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v):
                v.copy_(saved[i][k]) if i in saved else v.zero_()
