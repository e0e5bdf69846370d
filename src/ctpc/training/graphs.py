"""The whole training update as one CUDA graph (``training.cuda_graph: true``).

An update is hundreds of small kernels (T inference steps of ~15 each, the read-out, Adam); on a
GPU the small cells are bound by launching them, not by arithmetic. The update is captured once
as a CUDA graph with static buffers and replayed for every batch: one launch per update.

What is captured is exactly the pure update the eager loop runs
(:func:`ctpc.training.update.update`: the rule, the optimiser step, the statistics), from a
static input state (:class:`~ctpc.training.update.LearnState`) and batch to a static output
state and statistics. Around each replay, outside the graph: the batch is copied into the static
input buffers (and the state too when the caller's is not the graph's own, e.g. after replicas
were frozen), and after it the static output state is copied back into the static input state,
which is what the call returns; the statistics are copied from their static buffers into the
history (a few small copies; still no host sync). The returned state lives in the graph's
buffers: it holds the new state until the next call. Everything inside is sync-free by
construction: the inference runs without its divergence check (training checks at its sync
points), Adam's step count lives on the device (``capturable``), and the Gauss-Seidel step
updates preallocated buffers in place.

Capturing needs warm-up runs (CUDA's rule: lazily created state such as cuBLAS workspaces must
exist before capture). They run on a side stream on the real batch; the update being pure, they
leave the input state as it is, so the trajectory is the eager one, update for update
(``sims/gpu_check.py`` checks that on the GPU). SGD's momentum buffers, which torch.optim creates
at the first step, exist in the static state from the start, zero: a first step from a zero
buffer gives the buffer the gradient, as torch.optim's first step does.

Status: prepared and checked on the CPU only as far as the CPU allows (tests/test_cuda.py); no
GPU was lent to the session that wrote it.
"""
from __future__ import annotations

import dataclasses

import torch

from ctpc.config.schema import ConfigError
from ctpc.training.update import LearnState, SGDState

WARMUP = 3


class GraphedUpdate:
    """``step(state, x, y) -> (state, stats)`` (a pure update) replayed as one CUDA graph,
    captured at the first call; call it as ``step``."""

    def __init__(self, step, device: torch.device):
        if device.type != "cuda":
            raise ConfigError("training.cuda_graph: true needs a CUDA device (device: cuda or "
                              "auto on a machine with a GPU)")
        self.step = step
        self.graph = None
        self.x = self.y = self.state_in = self.state_out = self.stats = None

    def _capture(self, state: LearnState, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.clone(), y.clone()             # the static input buffers
        self.state_in = static_state(state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):                         # pure: state_in stays as it is
                self.step(self.state_in, self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.state_out, self.stats = self.step(self.state_in, self.x, self.y)

    def __call__(self, state: LearnState, x: torch.Tensor, y: torch.Tensor):
        """Replay the update from ``state`` on batch (x, y): (the new state, in the graph's
        static input buffers; the statistics, the static buffers in a new dict, so a caller
        that replaces an entry (frozen replicas) cannot detach the graph's own output buffer
        from later replays)."""
        if self.graph is None:
            self._capture(state, x, y)
        elif state is not self.state_in:
            copy_state_(self.state_in, state)
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        copy_state_(self.state_in, self.state_out)
        return self.state_in, dict(self.stats)


def static_state(state: LearnState) -> LearnState:
    """A copy of ``state`` in tensors of its own (the graph's static input), with SGD's missing
    momentum buffers made zero buffers (the graph always takes a step with a buffer)."""
    opt = state.opt
    if isinstance(opt, SGDState):
        opt = SGDState(tuple(torch.zeros_like(p) if b is None else b for b, p in
                             zip(opt.momentum_buffer, state.params.tensors)))
    clone = lambda ts: tuple(None if t is None else t.clone() for t in ts)
    if opt is not None:
        opt = type(opt)(**{f.name: clone(getattr(opt, f.name)) for f in dataclasses.fields(opt)})
    return LearnState(state.params.like(clone(state.params.tensors)), opt)


def copy_state_(dst: LearnState, src: LearnState) -> None:
    """Copy ``src``'s tensors into ``dst``'s *in place* (the graph holds their addresses); a
    missing SGD buffer in ``src`` (a state from before the first step) copies as zero."""
    if isinstance(src.opt, SGDState):
        src = LearnState(src.params, SGDState(tuple(
            torch.zeros_like(p) if b is None else b
            for b, p in zip(src.opt.momentum_buffer, src.params.tensors))))
    with torch.no_grad():
        for d, s in zip(dst.tensors(), src.tensors(), strict=True):
            if d is not s:
                d.copy_(s)
