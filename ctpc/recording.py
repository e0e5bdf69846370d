"""What a run keeps over time: a plan (which steps, layers, samples, units, variables), its size
estimate, and preallocated on-device buffers filled at record steps, for R replicas at once.

Per-layer summaries (norms, energy, BP alignment) are always kept for every layer at every
record step: they are small ``[time, layer]`` series and are what propagation studies read.
Full traces ``[time, layer, sample, unit]`` are kept for the selection in ``record``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import Config
from .dynamics import POP_H, POP_LAM, Dynamics, Params
from .memory import check_trace_size
from .network import Weights
from .reference import BPReference
from .results import SERIES_LAYER, SERIES_SCALAR, SERIES_WEIGHT, RunResult


@dataclass
class RecordPlan:
    steps: np.ndarray                 # step numbers to record (0 and the final step included)
    layers: np.ndarray                # 1-based hidden-layer numbers
    samples: np.ndarray               # batch indices
    units: np.ndarray                 # unit indices
    variables: tuple[str, ...]
    all_layers: bool
    all_samples: bool
    all_units: bool

    @property
    def trace_shape(self) -> tuple[int, int, int, int]:
        return len(self.steps), len(self.layers), len(self.samples), len(self.units)

    def trace_bytes(self, itemsize: int) -> int:
        return int(np.prod(self.trace_shape)) * len(self.variables) * itemsize


def record_steps(n_steps: int, every: int) -> np.ndarray:
    steps = np.arange(0, n_steps + 1, every)
    return steps if steps[-1] == n_steps else np.append(steps, n_steps)


def plan_recording(cfg: Config) -> RecordPlan:
    # The size check is arithmetic on the config: it runs before the array of record steps is
    # built, which for a huge integrator.steps would itself not fit.
    check_trace_size(cfg)
    rec = cfg.record
    pick = lambda sel, n, base: (np.arange(base, base + n) if sel == "all" else np.asarray(sel))
    plan = RecordPlan(
        steps=record_steps(cfg.integrator.n_steps, rec.every),
        layers=pick(rec.layers, cfg.n_hidden, 1),
        samples=pick(rec.samples, cfg.data.batch_size, 0),
        units=pick(rec.units, cfg.network.width, 0),
        variables=tuple(rec.variables),
        all_layers=rec.layers == "all", all_samples=rec.samples == "all",
        all_units=rec.units == "all")
    return plan


def _blocks(w: Weights):
    """The three weight blocks with the replica axis second-to-last: [1|H-1, R, n_elements]."""
    return (w.w_in.flatten(-2)[None], w.w_mid.flatten(-2), w.w_out.flatten(-2)[None])


def weight_norms(w: Weights) -> torch.Tensor:
    """[L, R] Frobenius norm of each weight matrix (one reduction per block)."""
    return torch.cat([torch.linalg.vector_norm(b, dim=-1) for b in _blocks(w)])


def alignment(est: Weights, ref: Weights, ref_norm: torch.Tensor | None = None):
    """(cosine [L, R], relative error [L, R]) of each weight matrix's estimate against BP.
    ``ref_norm``: :func:`weight_norms` of ``ref`` when known (it is constant over a run).

    An estimate that is exactly zero (e.g. every hidden layer at the feed-forward start, where
    r = 0 and lambda = 0) has cosine 0: it carries no alignment."""
    ref_norm = weight_norms(ref) if ref_norm is None else ref_norm
    dots, norms, diff = [], [], []
    for g, b in zip(_blocks(est), _blocks(ref)):
        dots.append(torch.linalg.vecdot(g, b))
        norms.append(torch.linalg.vector_norm(g, dim=-1))
        diff.append(torch.linalg.vector_norm(g - b, dim=-1))
    dots, norms, diff = torch.cat(dots), torch.cat(norms), torch.cat(diff)
    cos = torch.where(norms > 0, dots / (norms * ref_norm), torch.zeros_like(dots))
    return cos, diff / ref_norm


class Recorder:
    """Preallocated device buffers for R replicas; ``record`` writes one time slot (all replicas
    at the same step), and nothing is copied to the host until :meth:`results`."""

    def __init__(self, dyn: Dynamics, plan: RecordPlan, bp: BPReference, replicas: int):
        self.dyn, self.plan, self.bp, self.replicas = dyn, plan, bp, replicas
        net = dyn.net
        dev, dt = net.device, net.dtype
        # one spare slot: the final state of each replica, at its own last step
        n_t, n_h, n_w, R = len(plan.steps) + 1, net.n_hidden, net.depth, replicas
        _, l, s, u = plan.trace_shape
        # empty, not zeros: a slot is only ever read after it was written
        self.traces = {v: torch.empty(n_t, l, R, s, u, device=dev, dtype=dt)
                       for v in plan.variables}
        self.series = {k: torch.empty(n_t, R, device=dev, dtype=dt) for k in SERIES_SCALAR}
        self.series |= {k: torch.empty(n_t, n_h, R, device=dev, dtype=dt) for k in SERIES_LAYER}
        self.series |= {k: torch.empty(n_t, n_w, R, device=dev, dtype=dt) for k in SERIES_WEIGHT}
        self.bp_norm = weight_norms(bp.grads)              # [L, R], constant over the run
        idx = lambda a: torch.as_tensor(a, device=dev, dtype=torch.long)
        self._layer_idx = None if plan.all_layers else idx(plan.layers - 1)
        self._sample_idx = None if plan.all_samples else idx(plan.samples)
        self._unit_idx = None if plan.all_units else idx(plan.units)
        self.slot_steps: list[int] = []
        self._next = 0   # index into plan.steps of the next step due

    def _select(self, t: torch.Tensor) -> torch.Tensor:
        """[H, R, B, N] -> [layers, R, samples, units]."""
        if self._layer_idx is not None:
            t = t.index_select(0, self._layer_idx)
        if self._sample_idx is not None:
            t = t.index_select(2, self._sample_idx)
        if self._unit_idx is not None:
            t = t.index_select(3, self._unit_idx)
        return t

    def due(self, step: int) -> bool:
        return self._next < len(self.plan.steps) and self.plan.steps[self._next] == step

    def maybe_record(self, step: int, S: torch.Tensor, p: Params, residuals=None) -> None:
        """Record if ``step`` is due; ``residuals()`` gives the network pass at S when the
        caller has it already (the Gauss-Seidel carry does), else it is computed."""
        if self.due(step):
            self.record(step, S, p, residuals() if residuals is not None else None)

    def _values(self, S: torch.Tensor, p: Params, resid):
        err, credit = self.dyn.error(S, resid), self.dyn.credit(S, resid, p)
        return {"h": S[POP_H], "lam": S[POP_LAM], "err": err, "credit": credit}

    def _write(self, i: int, S: torch.Tensor, p: Params, resid=None) -> None:
        dyn = self.dyn
        resid = dyn.residuals(S, p) if resid is None else resid
        values = self._values(S, p, resid)
        err, credit = values["err"], values["credit"]
        for name, buf in self.traces.items():
            buf[i] = self._select(values[name])
        energy, loss = dyn.energy(S, resid, p)
        self.series["energy"][i] = energy
        self.series["loss"][i] = loss
        inv_sqrt_b = 1.0 / math.sqrt(p.x.shape[1])
        for key, t in zip(SERIES_LAYER, (resid.r, err, S[POP_LAM], credit)):
            # RMS over the batch of each sample's norm = ||t_l||_F / sqrt(B): one reduction
            torch.mul(torch.linalg.vector_norm(t, dim=(-2, -1)), inv_sqrt_b,
                      out=self.series[key][i])
        grads = dyn.net.weight_gradients(resid.a, resid.y_hat, credit, p.x, p.y)
        cos, rel = alignment(grads, self.bp.grads, self.bp_norm)
        self.series["bp_cos"][i] = cos
        self.series["bp_relerr"][i] = rel

    def record(self, step: int, S: torch.Tensor, p: Params, resid=None) -> None:
        """Write the state at ``step`` (every replica) into the next free slot."""
        self._write(len(self.slot_steps), S, p, resid)
        self.slot_steps.append(step)
        self._next = int(np.searchsorted(self.plan.steps, step, side="right"))

    def results(self, S: torch.Tensor, p: Params, steps_completed, diverged_step, *, dt,
                backend: str, device: str, t0: float, extra_attrs=None,
                slot_traces: dict | None = None, reasons=None) -> list[RunResult]:
        """The per-replica results of a finished run: ``S`` is the final state of every replica
        (a diverged replica's last bounded state), ``steps_completed[r]`` its step, and
        ``diverged_step[r]`` the first out-of-bounds step or None. ``dt[r]`` in ms.

        ``slot_traces``: traces recorded elsewhere (the Brian2 backend's StateMonitors), var ->
        [slots, layers, R, samples, units] for the slots recorded so far; the final state's
        traces are added here, from ``S``, as for the recorder's own buffers."""
        slot_steps = np.asarray(self.slot_steps, dtype=np.int64)
        done = np.asarray(steps_completed, dtype=np.int64)
        n = len(slot_steps)
        # Usually every replica's final state is the last recorded slot already; otherwise
        # (a replica diverged between record steps) one more slot holds each final state.
        extra = not (n and (slot_steps[-1] == done).all() and not slot_traces)
        if extra:
            self._write(n, S, p)
        with torch.no_grad():
            resid = self.dyn.residuals(S, p)
            grads = self.dyn.net.weight_gradients(resid.a, resid.y_hat,
                                                  self.dyn.credit(S, resid, p), p.x, p.y)
        host = lambda t: t.detach().cpu().numpy()        # no copy on the CPU
        used = n + extra
        traces = {k: host(v[:used]) for k, v in self.traces.items()}
        if slot_traces:
            values = self._values(S, p, resid)
            for k, v in slot_traces.items():
                traces[k] = np.concatenate([v[:n], host(self._select(values[k]))[None]])
        series = {k: host(v[:used]) for k, v in self.series.items()}
        adjoint = host(self.bp.adjoint_norm)
        grads_h = [[host(m) for m in grads.matrices(r)] for r in range(self.replicas)]
        bp_h = [[host(m) for m in self.bp.grads.matrices(r)] for r in range(self.replicas)]
        wall = time.perf_counter() - t0
        out = []
        for r in range(self.replicas):
            d = int(done[r])
            # slots before this replica's last step, then its final state
            keep = slice(None) if not extra else np.append(np.flatnonzero(slot_steps < d), n)
            steps = slot_steps if not extra else np.append(slot_steps[slot_steps < d], d)
            out.append(RunResult(
                steps=steps, dt=float(dt[r]),
                traces={k: v[keep][:, :, r] for k, v in traces.items()},
                series={k: v[keep][..., r] for k, v in series.items()},
                grads=grads_h[r], bp_grads=bp_h[r], bp_adjoint_norm=adjoint[:, r],
                layers=self.plan.layers, samples=self.plan.samples, units=self.plan.units,
                all_layers=self.plan.all_layers, n_hidden=self.dyn.net.n_hidden,
                status="ok" if diverged_step[r] is None else "diverged",
                diverged_at=None if diverged_step[r] is None else diverged_step[r] * float(dt[r]),
                steps_completed=d, backend=backend, device=device, wall_time_s=wall,
                extra_attrs=extra_attrs, diverged_reason=(reasons or [None] * self.replicas)[r]))
        return out
