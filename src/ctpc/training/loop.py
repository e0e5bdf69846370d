"""The training loop: updates, evaluation points, checkpoints, divergence, for R replicas.

Per update (no host sync): draw the batch of every replica from its own permutation of the
training split (seeded by the replica's ``seed`` and the epoch), compute the rule's weight update
(:mod:`ctpc.training.rules`), take one optimiser step (``torch.optim.Adam`` / ``SGD``; continuous
plasticity instead replaces the weights by those integrated during the presentation), and write
the update's statistics into preallocated device buffers.

The host reads the device only at *sync points*: a progress-bar refresh (at most every 0.5 s),
an evaluation point (every ``training.eval_every`` updates, each epoch's end, the last update,
and update 0), a checkpoint, and the end. There the loss and weight norms since the last sync
are checked: the first update whose loss or weights are non-finite marks its replica
*diverged*; that replica's weights are restored to the last good sync point and frozen there,
and the others go on (a single run stops).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ctpc.training.graphs import GraphedUpdate
from ctpc.training.metrics import evaluate, probe_alignment
from ctpc.training.setup import TrainSetup

UPDATE_SERIES = ("train_loss", "grad_norm", "weight_norm", "energy")   # [update, R]
LAYER_SERIES = ("res_norm", "lam_norm", "credit_norm")                 # [update, H, R]
EVAL_SCALARS = ("train_acc", "test_acc", "train_mse", "test_mse", "train_ce", "test_ce",
                "bp_cos_global")                                       # [eval, R]
EVAL_WEIGHT = ("bp_cos", "bp_relerr")                                  # [eval, L, R]
REFRESH_S = 0.5


@dataclass
class TrainState:
    """Everything that defines where a run is (what a checkpoint holds, on the host)."""
    update: int = 0                                    # updates done
    history: dict = field(default_factory=dict)        # name -> np [updates, ...] (R last)
    evals: list = field(default_factory=list)          # dicts: update, epoch, wall, metrics
    diverged: list | None = None                       # [R] first non-finite update or None
    elapsed_s: float = 0.0                             # wall time of earlier sessions
    train_s: float = 0.0                               # of which updates (no evaluation)


def eval_points(setup: TrainSetup) -> list[int]:
    """Updates after which to evaluate: 0, every eval_every, each epoch's end, the last."""
    total, per_epoch, every = setup.total_updates, setup.updates_per_epoch, \
        setup.training.eval_every
    points = {0, total} | set(range(per_epoch, total + 1, per_epoch))
    if every:
        points |= set(range(every, total + 1, every))
    return sorted(p for p in points if p <= total)


def checkpoint_points(setup: TrainSetup) -> set[int]:
    every, total = setup.training.checkpoint_every, setup.total_updates
    return ({total} | (set(range(every, total, every)) if every else set())) - {0}


class Trainer:
    """Runs a :class:`TrainSetup`; ``checkpoint(state)`` (optional) persists a state."""

    def __init__(self, setup: TrainSetup, *, progress: bool = False, checkpoint=None,
                 state: TrainState | None = None, optimizer_state: dict | None = None):
        self.s = setup
        m = setup.model
        self.weights = m.weights                         # updated in place by the optimiser
        self.R, self.H, self.L = setup.replicas, m.net.n_hidden, m.net.depth
        self.device, self.dtype = m.net.device, m.net.dtype
        self.optimizer = self._optimizer()
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        self.state = state or TrainState(diverged=[None] * self.R)
        self.progress, self.checkpoint = progress, checkpoint
        U, R, H = setup.total_updates, self.R, self.H
        new = lambda *shape: torch.full(shape, float("nan"), device=self.device,
                                        dtype=self.dtype)
        self.buf = {k: new(U, R) for k in UPDATE_SERIES} | {k: new(U, H, R) for k in LAYER_SERIES}
        self.synced = self.state.update            # updates already checked and on the host
        self.snapshot = [t.clone() for t in self.weights.tensors]
        b = setup.training.probe_size or setup.cfg.data.batch_size
        self.probe = (setup.train.x[:b].expand(R, -1, -1), setup.train.y[:b].expand(R, -1, -1))
        self._perm_epoch, self._perm = None, None
        self._graph = None

    # ------------------------------------------------------------------ pieces
    def _optimizer(self) -> torch.optim.Optimizer:
        t, params = self.s.training, list(self.weights.tensors)
        if t.optimizer == "adam":
            # capturable: step counts on the device, so a CUDA graph can replay the step
            return torch.optim.Adam(params, lr=self.s.lr, betas=(0.9, 0.999), eps=1e-8,
                                    capturable=t.cuda_graph)
        return torch.optim.SGD(params, lr=self.s.lr, momentum=t.momentum)

    def _batch(self, u: int):
        """x [R, B, D], y [R, B, O] of update u (0-based) for every replica."""
        s, b = self.s, self.s.cfg.data.batch_size
        epoch, pos = divmod(u, s.updates_per_epoch)
        if self._perm_epoch != epoch:
            perms = [np.random.default_rng([c.seed, epoch]).permutation(s.train.n)
                     for c in s.cfgs]
            self._perm = torch.as_tensor(np.stack(perms), device=self.device)
            self._perm_epoch = epoch
        idx = self._perm[:, pos * b:(pos + 1) * b]
        flat = idx.reshape(-1)
        shape = (self.R, idx.shape[1])
        return (s.train.x.index_select(0, flat).view(*shape, -1),
                s.train.y.index_select(0, flat).view(*shape, -1))

    def update_body(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One update on batch (x, y): the rule, the optimiser step (or the plastic weights),
        the statistics as a dict of tensors. Device work only, no host sync: this is what a CUDA
        graph captures (:mod:`ctpc.training.graphs`)."""
        rule = self.s.rule
        stats = {}
        if rule.plastic:
            w_new, st = rule.present(self.weights, x, y)
            for t, n in zip(self.weights.tensors, w_new.tensors):
                t.copy_(n)
        else:
            grads, st = rule(self.weights, x, y)
            for t, g in zip(self.weights.tensors, grads.tensors):
                t.grad = g
            stats["grad_norm"] = grads.norm()
            self.optimizer.step()
        stats["train_loss"] = st.loss
        stats["weight_norm"] = self.weights.norm()
        if st.energy is not None:
            stats["energy"] = st.energy
            stats.update({k: getattr(st, k) for k in LAYER_SERIES})
        return stats

    def _update(self, u: int) -> None:
        x, y = self._batch(u)
        if self.s.training.cuda_graph:
            if self._graph is None:
                self._graph = GraphedUpdate(self, x, y)
            stats = self._graph(x, y)
        else:
            stats = self.update_body(x, y)
        if self._dead_host.any():     # frozen replicas keep their last good weights
            for t, snap, axis in zip(self.weights.tensors, self.snapshot,
                                     self.weights.replica_axes):
                t.index_copy_(axis, self._dead_idx, snap.index_select(axis, self._dead_idx))
            stats["weight_norm"] = self.weights.norm()
        for k, v in stats.items():
            self.buf[k][u] = v

    # ------------------------------------------------------------------ sync points
    def _sync(self, done: int) -> None:
        """Copy the updates since the last sync to the host and check them for divergence."""
        lo = self.synced
        if done <= lo:
            return
        host = {k: v[lo:done].cpu().numpy() for k, v in self.buf.items()}
        for k, v in host.items():
            prev = self.state.history.get(k)
            self.state.history[k] = v if prev is None else np.concatenate([prev, v])
        bad = ~np.isfinite(host["train_loss"]) | ~np.isfinite(host["weight_norm"])   # [k, R]
        newly = [r for r in range(self.R)
                 if self.state.diverged[r] is None and bad[:, r].any()]
        for r in newly:
            self.state.diverged[r] = lo + int(np.argmax(bad[:, r])) + 1     # 1-based update
        if newly:
            self._set_dead()
            with torch.no_grad():
                for t, snap, axis in zip(self.weights.tensors, self.snapshot,
                                       self.weights.replica_axes):
                    t.index_copy_(axis, self._dead_idx, snap.index_select(axis, self._dead_idx))
        alive = ~self._dead_host
        for t, snap, axis in zip(self.weights.tensors, self.snapshot, self.weights.replica_axes):
            if alive.all():
                snap.copy_(t)
            else:
                keep = torch.as_tensor(np.flatnonzero(alive), device=self.device)
                snap.index_copy_(axis, keep, t.index_select(axis, keep))
        self.synced = done

    def _set_dead(self) -> None:
        self._dead_host = np.array([d is not None for d in self.state.diverged])
        self._dead_idx = torch.as_tensor(np.flatnonzero(self._dead_host), device=self.device)

    def elapsed(self) -> float:
        """Wall time of the run so far, earlier (resumed) sessions included (s)."""
        return self.state.elapsed_s + time.perf_counter() - self._t0

    def _evaluate(self, done: int) -> dict:
        s, w = self.s, self.weights
        chunk = s.training.eval_batch_size
        out = {"update": done, "epoch": done / s.updates_per_epoch}
        tr = evaluate(s.model.net, w, s.train.x, s.train.labels, s.train.y, chunk)
        te = evaluate(s.model.net, w, s.test.x, s.test.labels, s.test.y, chunk)
        readout = s.rule.readout if s.rule.plastic else s.rule
        cos, rel, cos_g = probe_alignment(readout, s.model.net, w, *self.probe)
        vals = {"train_acc": tr["acc"], "test_acc": te["acc"], "train_mse": tr["mse"],
                "test_mse": te["mse"], "train_ce": tr["ce"], "test_ce": te["ce"],
                "bp_cos_global": cos_g, "bp_cos": cos, "bp_relerr": rel}
        dead = np.array([d is not None for d in self.state.diverged])
        for k, v in vals.items():
            v = v.cpu().numpy().astype(float)
            v[..., dead] = np.nan
            out[k] = v
        out["wall_s"] = self.elapsed()
        return out

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainState:
        s, st = self.s, self.state
        self._set_dead()
        points, ckpts = eval_points(s), checkpoint_points(s)
        self._t0, train_t = time.perf_counter(), 0.0
        done = st.update
        if self.progress and getattr(s.rule, "compiles", False) and done < s.total_updates:
            # the first rule call (update or evaluation probe) builds the compiled program
            took = "seconds" if s.rule.mode == "loop" else "up to minutes"
            print(f"ctpc: compiling the presentation (integrator.compile, {s.rule.mode} steps): "
                  f"a one-off build, {took} on a cold cache", file=sys.stderr, flush=True)
        if done == 0 and not st.evals:
            st.evals.append(self._evaluate(0))
        bar = tqdm(total=s.total_updates, initial=done, unit="update", leave=False,
                   disable=not self.progress, desc=f"{s.cfg.name or 'ctpc'} {s.rule.method}")
        last_refresh = time.monotonic()
        with torch.no_grad(), bar:
            while done < s.total_updates and not self._dead_host.all():
                t_u = time.perf_counter()
                self._update(done)
                done += 1
                train_t += time.perf_counter() - t_u
                refresh = self.progress and time.monotonic() - last_refresh > REFRESH_S
                if done in points or done in ckpts or refresh or done == s.total_updates:
                    self._sync(done)
                    st.update = done
                    st.train_s += train_t
                    train_t = 0.0
                    if done in points:
                        st.evals.append(self._evaluate(done))
                    # a checkpoint is only ever a good state: never after a divergence
                    if done in ckpts and self.checkpoint is not None and \
                            not self._dead_host.any():
                        self.checkpoint(self)
                    bar.update(done - bar.n)
                    bar.set_postfix(self._postfix(), refresh=False)
                    last_refresh = time.monotonic()
            self._sync(done)
            st.update = done
            st.train_s += train_t
        st.elapsed_s = self.elapsed()
        return st

    def _postfix(self) -> dict:
        st = self.state
        alive = ~self._dead_host
        post = {}
        if "train_loss" in st.history and alive.any():
            post["loss"] = f"{st.history['train_loss'][-1][alive].mean():.4f}"
        if st.evals and alive.any():
            post["test_acc"] = f"{st.evals[-1]['test_acc'][alive].mean():.3f}"
        return post
