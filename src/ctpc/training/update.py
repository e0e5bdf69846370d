"""One training update as a pure function: ``update(state, x, y, rule, optimiser)``.

A :class:`LearnState` holds everything an update changes, as explicit tensors: the parameters
(:class:`~ctpc.core.network.Weights`, biases included when the network has them) and the
optimiser's state (:class:`AdamState`: the step count and the two moments of every parameter
tensor; :class:`SGDState`: the momentum buffers; None for continuous plasticity, which has no
optimiser). :func:`update` computes the rule's weight update on a batch
(:mod:`ctpc.training.rules`) and returns a *new* state and the update's statistics; the state it
is given is never modified, so two updates from one state give the same result.

The arithmetic is torch.optim's, to the bit: the step calls the functional algorithms that
``torch.optim.Adam(params, lr, betas=(0.9, 0.999), eps=1e-8).step()`` and
``torch.optim.SGD(params, lr, momentum).step()`` call (``torch.optim.adam.adam``,
``torch.optim.sgd.sgd``) with the flags those pass, on clones of the parameters and the state.
The fresh state is what those optimisers create lazily at their first step (Adam: step 0 on the
CPU, or on the device when capturable, and zero moments; SGD: no momentum buffer yet, which the
first step makes a copy of the gradient), so a run is the one the torch.optim objects gave.
Continuous plasticity is an update of the same shape: the new parameters are those integrated
during the presentation.

Everything here is device work without a host sync: a CUDA graph captures :func:`update`
(:mod:`ctpc.training.graphs`).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
from torch.optim.adam import adam as adam_functional     # what torch.optim.Adam.step calls
from torch.optim.sgd import sgd as sgd_functional        # what torch.optim.SGD.step calls

from ctpc.core.network import Weights

LAYER_SERIES = ("res_norm", "lam_norm", "credit_norm")          # per-layer statistics [H, R]
BETAS, EPS = (0.9, 0.999), 1e-8                                   # Adam's, as torch.optim's


@dataclass(frozen=True)
class AdamState:
    """Adam's state, one entry per parameter tensor (the order of ``Weights.tensors``)."""
    step: tuple[torch.Tensor, ...]          # 0-d updates taken (torch.optim's layout and device)
    exp_avg: tuple[torch.Tensor, ...]       # first moment, like the parameter
    exp_avg_sq: tuple[torch.Tensor, ...]    # second moment, like the parameter


@dataclass(frozen=True)
class SGDState:
    """SGD's momentum buffers, one per parameter tensor; None before the first step (torch.optim
    creates the buffer there, as a copy of the gradient) and always without momentum."""
    momentum_buffer: tuple[torch.Tensor | None, ...]


OptState = AdamState | SGDState | None


@dataclass(frozen=True)
class LearnState:
    """What one update changes: the parameters and the optimiser's state (None: plasticity)."""
    params: Weights
    opt: OptState = None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor of the state: the parameters, then the optimiser's, field by field
        (SGD's missing buffers left out)."""
        return (*self.params.tensors, *opt_tensors(self.opt))


def opt_tensors(opt: OptState) -> tuple[torch.Tensor, ...]:
    if opt is None:
        return ()
    return tuple(t for f in dataclasses.fields(opt) for t in getattr(opt, f.name)
                 if t is not None)


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim gives Adam's step count (``optimizer._get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


# flags of adam() that not every torch >= 2.2 has; Adam.step passes them False for real
# parameters (has_complex) and by default (decoupled_weight_decay, from torch 2.6 on)
_ADAM_FLAGS = {k: False for k in ("has_complex", "decoupled_weight_decay")
               if k in inspect.signature(adam_functional).parameters}


@dataclass(frozen=True)
class Optimiser:
    """The optimiser settings of a run: ``kind`` 'adam' (betas 0.9, 0.999, eps 1e-8), 'sgd'
    (with ``momentum``) or 'none' (continuous plasticity); ``capturable``: Adam's step count on
    the device (what a CUDA graph needs, as torch.optim.Adam's ``capturable=True``)."""
    kind: str
    lr: float
    momentum: float = 0.0
    capturable: bool = False

    @staticmethod
    def of(setup) -> "Optimiser":
        """The settings of a :class:`ctpc.training.setup.TrainSetup`."""
        t = setup.training
        if setup.rule.plastic:
            return Optimiser("none", setup.lr)
        if t.optimizer == "adam":
            # On a GPU always the capturable form, with or without a CUDA graph: its step count
            # lives on the device in float32 and its arithmetic differs from the CPU form by
            # ~1e-7, so graph and eager training follow the same trajectory (the GPU run of
            # 2026-12-04 found them 1e-6 apart when only the graph used it).
            on_gpu = setup.model.net.device.type == "cuda"
            return Optimiser("adam", setup.lr, capturable=t.cuda_graph or on_gpu)
        return Optimiser("sgd", setup.lr, momentum=t.momentum)

    # ------------------------------------------------------------------ states
    def init(self, params: Weights) -> LearnState:
        """The state of a fresh run at ``params`` (what torch.optim creates at its first step)."""
        return LearnState(params, self.fresh(params))

    def fresh(self, params: Weights) -> OptState:
        ts = params.tensors
        if self.kind == "adam":
            steps = tuple(self._step_tensor(0.0, p) for p in ts)
            zeros = lambda: tuple(torch.zeros_like(p, memory_format=torch.preserve_format)
                                  for p in ts)
            return AdamState(steps, zeros(), zeros())
        if self.kind == "sgd":
            return SGDState((None,) * len(ts))
        return None

    def _step_tensor(self, value, p: torch.Tensor) -> torch.Tensor:
        """Adam's step count where torch.optim keeps it: on the device when capturable, else on
        the CPU; a fresh or legacy (number) count in torch.optim's scalar dtype, a saved tensor
        as its ``load_state_dict`` leaves it (cast to float32 on the device when capturable,
        else kept as it is)."""
        if torch.is_tensor(value):
            return value.to(dtype=torch.float32, device=p.device) if self.capturable else value
        return torch.tensor(float(value), dtype=_scalar_dtype(),
                            device=p.device if self.capturable else "cpu")

    def load(self, params: Weights, saved: dict) -> LearnState:
        """The state at ``params`` from saved optimiser tensors (``saved``: field name -> one
        entry per parameter tensor, as :meth:`LearnState.opt` holds them; an Adam entry None is
        a parameter not stepped yet), placed and cast as ``torch.optim``'s ``load_state_dict``
        does. ValueError when they do not fit these parameters or this optimiser."""
        ts, fresh = params.tensors, self.fresh(params)
        if fresh is None:
            return LearnState(params, None)
        names = [f.name for f in dataclasses.fields(fresh)]
        if set(saved) != set(names):
            raise ValueError(f"its optimiser state holds {sorted(saved)}, not the {names} of "
                             f"{self.kind}")
        fields = {}
        for name in names:
            entries = list(saved[name])
            if len(entries) != len(ts):
                raise ValueError(f"its optimiser state has {len(entries)} {name} tensors for "
                                 f"{len(ts)} parameter tensors")
            out = []
            for i, (v, p, f) in enumerate(zip(entries, ts, getattr(fresh, name))):
                if v is None:
                    out.append(f)
                    continue
                if name == "step":
                    if torch.is_tensor(v) and v.numel() != 1:
                        raise ValueError(f"its step count {i} is not a number")
                    out.append(self._step_tensor(v, p))
                    continue
                if not torch.is_tensor(v) or v.shape != p.shape:
                    raise ValueError(f"its optimiser {name} {i} does not have the shape of "
                                     "this network's parameter")
                out.append(v.to(dtype=p.dtype, device=p.device))
            fields[name] = tuple(out)
        return LearnState(params, type(fresh)(**fields))

    # ------------------------------------------------------------------ the step
    def step(self, params: Weights, grads: Weights, opt: OptState) -> tuple[Weights, OptState]:
        """(new parameters, new state): one torch.optim step on clones (nothing is modified)."""
        p = [t.clone() for t in params.tensors]
        g = list(grads.tensors)
        with torch.no_grad():
            if self.kind == "adam":
                steps = [t.clone() for t in opt.step]
                m = [t.clone() for t in opt.exp_avg]
                v = [t.clone() for t in opt.exp_avg_sq]
                # the arguments torch.optim.Adam.step passes (its defaults, foreach/fused None)
                adam_functional(
                    p, g, m, v, [], steps, foreach=None, capturable=self.capturable,
                    differentiable=False, fused=None, grad_scale=None, found_inf=None,
                    **_ADAM_FLAGS,
                    amsgrad=False, beta1=BETAS[0], beta2=BETAS[1], lr=self.lr,
                    weight_decay=0, eps=EPS, maximize=False)
                new = AdamState(tuple(steps), tuple(m), tuple(v))
            elif self.kind == "sgd":
                # torch.optim.SGD.step gives the buffers only with momentum
                bufs = [None if b is None else b.clone() for b in opt.momentum_buffer] \
                    if self.momentum != 0 else []
                sgd_functional(
                    p, g, bufs, has_sparse_grad=False, foreach=None, fused=None,
                    grad_scale=None, found_inf=None, weight_decay=0, momentum=self.momentum,
                    lr=self.lr, dampening=0, nesterov=False, maximize=False)
                new = SGDState(tuple(bufs) if self.momentum != 0 else opt.momentum_buffer)
            else:
                raise ValueError(f"optimiser {self.kind!r} has no step")
        return params.like(p), new


def update(state: LearnState, x: torch.Tensor, y: torch.Tensor, rule,
           optimiser: Optimiser, **noise) -> tuple[LearnState, dict]:
    """One update on batch (x [R, B, D], y [R, B, O]): the rule's weight update, the optimiser
    step (or, for a plastic rule, the weights integrated during the presentation), and the
    statistics (name -> device tensor, R last). ``state`` is not modified. Device work only, no
    host sync. ``noise``: ``stream=`` the update's noise stream, given to a noisy rule only
    (:class:`ctpc.training.loop.Trainer`)."""
    w = state.params
    stats = {}
    if rule.plastic:
        w_new, st = rule.present(w, x, y)
        # in tensors of their own, laid out as the parameters they replace
        new = LearnState(w.like(torch.empty_like(t).copy_(n)
                                for t, n in zip(w.tensors, w_new.tensors)), state.opt)
    else:
        grads, st = rule(w, x, y, **noise)
        stats["grad_norm"] = grads.norm()
        new = LearnState(*optimiser.step(w, grads, state.opt))
    stats["train_loss"] = st.loss
    stats["weight_norm"] = new.params.norm()
    if st.energy is not None:
        stats["energy"] = st.energy
        stats.update({k: getattr(st, k) for k in LAYER_SERIES})
    return new, stats


# ---------------------------------------------------------------------------- divergence
def freeze(state: LearnState, good: Weights, dead: torch.Tensor) -> LearnState:
    """``state`` with the replicas ``dead`` (indices [k]) set to their weights in ``good``
    (new tensors; the optimiser state is kept: it is per element, a frozen replica's touches
    no other)."""
    params = state.params
    return LearnState(params.like(
        t.index_copy(axis, dead, g.index_select(axis, dead))
        for t, g, axis in zip(params.tensors, good.tensors, params.replica_axes)), state.opt)


def keep_good(good: Weights, params: Weights, alive: torch.Tensor | None) -> Weights:
    """The last good weights after a sync: those of ``params`` for the replicas ``alive``
    (indices; None: every replica), ``good``'s for the others. New tensors."""
    if alive is None:
        return params.map(torch.clone)
    return good.like(g.index_copy(axis, alive, t.index_select(axis, alive))
                     for g, t, axis in zip(good.tensors, params.tensors, params.replica_axes))
