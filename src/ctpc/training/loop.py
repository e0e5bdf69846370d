"""The training loop: ``state = update(state, batch)`` with evaluation points, checkpoints and
divergence, for R replicas.

Per update (no host sync): draw the batch of every replica from its own permutation of the
training split (seeded by the replica's ``seed`` and the epoch), and apply the pure update of
:mod:`ctpc.training.update` (the rule's weight update, :mod:`ctpc.training.rules`, and one
torch.optim step; continuous plasticity instead takes the weights integrated during the
presentation) to the explicit state (:class:`~ctpc.training.update.LearnState`: parameters and
optimiser state), writing the update's statistics into preallocated device buffers.

The host reads the device only at *sync points*: a progress-bar refresh (at most every 0.5 s),
an evaluation point (every ``training.eval_every`` updates, each epoch's end, the last update,
and update 0), a checkpoint, and the end. There the loss and weight norms since the last sync
are checked: the first update whose loss or weights are non-finite marks its replica
*diverged*; that replica's weights are restored to the last good sync point and frozen there,
and the others go on (a single run stops).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from ctpc.core.noise import update_stream
from ctpc.training.graphs import GraphedUpdate
from ctpc.training.metrics import evaluate, probe_alignment
from ctpc.training.setup import TrainSetup
from ctpc.training.update import LAYER_SERIES, LearnState, Optimiser, freeze, keep_good, update

UPDATE_SERIES = ("train_loss", "grad_norm", "weight_norm", "energy")   # [update, R]
# LAYER_SERIES (ctpc.training.update): res_norm, lam_norm, credit_norm   [update, H, R]
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


class Batches:
    """The batches of a run: ``batches(u)`` = (x [R, B, D], y [R, B, O]) of update u (0-based),
    every replica's drawn from its own permutation of the training split, seeded by the
    replica's ``seed`` and the epoch (the permutations of the current epoch are kept)."""

    def __init__(self, setup: TrainSetup):
        self.s = setup
        self.epoch, self.perm = None, None

    def __call__(self, u: int):
        s, b = self.s, self.s.cfg.data.batch_size
        epoch, pos = divmod(u, s.updates_per_epoch)
        if self.epoch != epoch:
            perms = [np.random.default_rng([c.seed, epoch]).permutation(s.train.n)
                     for c in s.cfgs]
            self.perm = torch.as_tensor(np.stack(perms), device=s.model.net.device)
            self.epoch = epoch
        idx = self.perm[:, pos * b:(pos + 1) * b]
        flat = idx.reshape(-1)
        shape = (s.replicas, idx.shape[1])
        return (s.train.x.index_select(0, flat).view(*shape, -1),
                s.train.y.index_select(0, flat).view(*shape, -1))


class Trainer:
    """Runs a :class:`TrainSetup` from ``learn`` (default: the model's weights and a fresh
    optimiser state) and ``state`` (default: update 0); ``checkpoint(learn, progress)``
    (optional) persists a good state. ``run()`` returns the :class:`TrainState` and leaves the
    final parameters in ``setup.model.weights``."""

    def __init__(self, setup: TrainSetup, *, progress: bool = False, checkpoint=None,
                 state: TrainState | None = None, learn: LearnState | None = None):
        self.s = setup
        optimiser = Optimiser.of(setup)
        step = partial(update, rule=setup.rule, optimiser=optimiser)
        # a CUDA graph captures the update at its first call (ctpc.training.graphs)
        self.step = GraphedUpdate(step, setup.model.net.device) if setup.training.cuda_graph \
            else step
        self.batches = Batches(setup)
        self.learn = learn or optimiser.init(setup.model.weights)
        self.state = state or TrainState(diverged=[None] * setup.replicas)
        self.good = self.learn.params.map(torch.clone)   # the weights of the last good sync
        self.dead = self._dead_index()                   # [k] indices of diverged replicas
        self.progress, self.checkpoint = progress, checkpoint
        U, R, H, m = setup.total_updates, setup.replicas, setup.model.net.n_hidden, setup.model
        new = lambda *shape: torch.full(shape, float("nan"), device=m.net.device,
                                        dtype=m.net.dtype)
        self.buf = {k: new(U, R) for k in UPDATE_SERIES} | {k: new(U, H, R) for k in LAYER_SERIES}
        self.t0 = time.perf_counter()                    # the start of this session's run

    # ------------------------------------------------------------------ pieces
    def _dead_index(self) -> torch.Tensor:
        return torch.as_tensor(np.flatnonzero(self.dead_mask()),
                               device=self.s.model.net.device)

    def dead_mask(self) -> np.ndarray:
        """[R] whether each replica has diverged."""
        return np.array([d is not None for d in self.state.diverged])

    def _update(self, u: int) -> None:
        # a noisy run gives each update's presentation its own noise stream (resume-exact)
        noise = {"stream": update_stream(u)} if self.s.model.noise is not None else {}
        learn, stats = self.step(self.learn, *self.batches(u), **noise)
        if len(self.dead):     # frozen replicas keep their last good weights
            learn = freeze(learn, self.good, self.dead)
            stats["weight_norm"] = learn.params.norm()
        self.learn = learn
        for k, v in stats.items():
            self.buf[k][u] = v

    # ------------------------------------------------------------------ sync points
    def _sync(self, done: int) -> None:
        """Copy the updates since the last sync to the host, check them for divergence, and
        mark the run synced at ``done`` updates (``state.update``)."""
        st = self.state
        lo = st.update
        if done <= lo:
            return
        host = {k: v[lo:done].cpu().numpy() for k, v in self.buf.items()}
        for k, v in host.items():
            prev = st.history.get(k)
            st.history[k] = v if prev is None else np.concatenate([prev, v])
        bad = ~np.isfinite(host["train_loss"]) | ~np.isfinite(host["weight_norm"])   # [k, R]
        newly = [r for r in range(self.s.replicas) if st.diverged[r] is None and bad[:, r].any()]
        for r in newly:
            st.diverged[r] = lo + int(np.argmax(bad[:, r])) + 1     # 1-based update
        if newly:
            self.dead = self._dead_index()
            self.learn = freeze(self.learn, self.good, self.dead)
        alive = ~self.dead_mask()
        self.good = keep_good(self.good, self.learn.params, None if alive.all() else
                              torch.as_tensor(np.flatnonzero(alive),
                                              device=self.s.model.net.device))
        st.update = done

    def elapsed(self) -> float:
        """Wall time of the run so far, earlier (resumed) sessions included (s)."""
        return self.state.elapsed_s + time.perf_counter() - self.t0

    def _evaluate(self, done: int) -> dict:
        s, w = self.s, self.learn.params
        chunk = s.training.eval_batch_size
        out = {"update": done, "epoch": done / s.updates_per_epoch}
        tr = evaluate(s.model.net, w, s.train.x, s.train.labels, s.train.y, chunk)
        te = evaluate(s.model.net, w, s.test.x, s.test.labels, s.test.y, chunk)
        readout = s.rule.readout if s.rule.plastic else s.rule
        cos, rel, cos_g = probe_alignment(readout, s.model.net, w, *probe_batch(s))
        vals = {"train_acc": tr["acc"], "test_acc": te["acc"], "train_mse": tr["mse"],
                "test_mse": te["mse"], "train_ce": tr["ce"], "test_ce": te["ce"],
                "bp_cos_global": cos_g, "bp_cos": cos, "bp_relerr": rel}
        dead = self.dead_mask()
        for k, v in vals.items():
            v = v.cpu().numpy().astype(float)
            v[..., dead] = np.nan
            out[k] = v
        out["wall_s"] = self.elapsed()
        return out

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainState:
        s, st = self.s, self.state
        points, ckpts = eval_points(s), checkpoint_points(s)
        self.t0, train_t = time.perf_counter(), 0.0
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
            while done < s.total_updates and len(self.dead) < s.replicas:
                t_u = time.perf_counter()
                self._update(done)
                done += 1
                train_t += time.perf_counter() - t_u
                refresh = self.progress and time.monotonic() - last_refresh > REFRESH_S
                if done in points or done in ckpts or refresh or done == s.total_updates:
                    self._sync(done)
                    st.train_s += train_t
                    train_t = 0.0
                    if done in points:
                        st.evals.append(self._evaluate(done))
                    # a checkpoint is only ever a good state: never after a divergence
                    if done in ckpts and self.checkpoint is not None and not len(self.dead):
                        self.checkpoint(self.learn,
                                        dataclasses.replace(st, elapsed_s=self.elapsed()))
                    bar.update(done - bar.n)
                    bar.set_postfix(self._postfix(), refresh=False)
                    last_refresh = time.monotonic()
            self._sync(done)
            st.train_s += train_t
        st.elapsed_s = self.elapsed()
        s.model.weights = self.learn.params          # the final parameters, for the caller
        return st

    def _postfix(self) -> dict:
        st = self.state
        alive = ~self.dead_mask()
        post = {}
        if "train_loss" in st.history and alive.any():
            post["loss"] = f"{st.history['train_loss'][-1][alive].mean():.4f}"
        if st.evals and alive.any():
            post["test_acc"] = f"{st.evals[-1]['test_acc'][alive].mean():.3f}"
        return post


def probe_batch(setup: TrainSetup):
    """The alignment probe: the first ``training.probe_size`` (default: data.batch_size)
    training examples, for every replica (x [R, b, D], y [R, b, O]; views)."""
    b = setup.training.probe_size or setup.cfg.data.batch_size
    R = setup.replicas
    return setup.train.x[:b].expand(R, -1, -1), setup.train.y[:b].expand(R, -1, -1)
