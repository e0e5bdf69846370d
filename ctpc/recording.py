"""What a run keeps over time: a plan (which steps, layers, samples, units, variables), its size
estimate, and preallocated on-device buffers filled at record steps.

Per-layer summaries (norms, energy, BP alignment) are always kept for every layer at every
record step: they are small ``[time, layer]`` series and are what propagation studies read.
Full traces ``[time, layer, sample, unit]`` are kept for the selection in ``record``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import Config, ConfigError
from .dynamics import LAM, Dynamics
from .reference import BPReference

SERIES_LAYER = ("res_norm", "err_norm", "lam_norm", "credit_norm")   # [time, layer]
SERIES_WEIGHT = ("bp_cos", "bp_relerr")                             # [time, weight]
SERIES_SCALAR = ("energy", "loss")                                   # [time]


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
    check_size(cfg, plan)
    return plan


def check_size(cfg: Config, plan: RecordPlan) -> None:
    itemsize = 4 if cfg.dtype == "float32" else 8
    mb = plan.trace_bytes(itemsize) / 2**20
    if mb > cfg.record.max_mb:
        t, l, s, u = plan.trace_shape
        raise ConfigError(
            f"record: the traces would take {mb:,.0f} MB ({t} times x {l} layers x {s} samples x "
            f"{u} units x {len(plan.variables)} variables x {itemsize} bytes), above "
            f"record.max_mb = {cfg.record.max_mb:g}. Shrink it: record.every (now "
            f"{cfg.record.every}), a subset in record.layers / record.samples / record.units, "
            f"fewer record.variables, or raise record.max_mb.")


def _rms(t: torch.Tensor) -> torch.Tensor:
    """RMS over the batch of each sample's L2 norm, per layer: [H, B, N] -> [H]."""
    return t.square().sum(-1).mean(-1).sqrt()


class Recorder:
    """Preallocated device buffers; ``record`` writes one time slot, no host copy until the end."""

    def __init__(self, dyn: Dynamics, plan: RecordPlan, bp: BPReference):
        self.dyn, self.plan = dyn, plan
        net = dyn.net
        dev, dt = net.device, net.dtype
        n_t, n_h, n_w = len(plan.steps), net.n_hidden, net.depth
        self.traces = {v: torch.zeros(plan.trace_shape, device=dev, dtype=dt)
                       for v in plan.variables}
        self.series = {k: torch.zeros(n_t, device=dev, dtype=dt) for k in SERIES_SCALAR}
        self.series |= {k: torch.zeros(n_t, n_h, device=dev, dtype=dt) for k in SERIES_LAYER}
        self.series |= {k: torch.zeros(n_t, n_w, device=dev, dtype=dt) for k in SERIES_WEIGHT}
        idx = lambda a: torch.as_tensor(a, device=dev, dtype=torch.long)
        self._layer_idx = None if plan.all_layers else idx(plan.layers - 1)
        self._sample_idx = None if plan.all_samples else idx(plan.samples)
        self._unit_idx = None if plan.all_units else idx(plan.units)
        self.bp_in, self.bp_out = bp.grads[0], bp.grads[-1]
        self.bp_mid = torch.stack(bp.grads[1:-1]) if n_w > 2 else net.w_mid.new_zeros(0, 1, 1)
        self.bp_norm = torch.stack([b.square().sum() for b in bp.grads]).sqrt()   # [L]
        self.recorded_steps: list[int] = []
        self._next = 0   # index into plan.steps of the next step due

    def _per_weight(self, fn, grads) -> torch.Tensor:
        """Apply fn(estimate, bp) per weight matrix, with the L-2 square ones batched -> [L]."""
        g_in, g_mid, g_out = grads
        parts = [fn(g_in, self.bp_in).reshape(1)]
        if self.bp_mid.shape[0]:
            parts.append(fn(g_mid, self.bp_mid))
        parts.append(fn(g_out, self.bp_out).reshape(1))
        return torch.cat(parts)

    def _select(self, t: torch.Tensor) -> torch.Tensor:
        if self._layer_idx is not None:
            t = t.index_select(0, self._layer_idx)
        if self._sample_idx is not None:
            t = t.index_select(1, self._sample_idx)
        if self._unit_idx is not None:
            t = t.index_select(2, self._unit_idx)
        return t

    def due(self, step: int) -> bool:
        return self._next < len(self.plan.steps) and self.plan.steps[self._next] == step

    def maybe_record(self, step: int, S: torch.Tensor) -> None:
        if self.due(step):
            self.record(step, S)

    def record(self, step: int, S: torch.Tensor) -> None:
        """Write the state at ``step`` into the next free slot."""
        i, dyn = len(self.recorded_steps), self.dyn
        res = dyn.residuals(S)
        err, credit = dyn.error(S, res), dyn.credit(S, res)
        values = {"h": S[0], "lam": S[LAM], "err": err, "credit": credit}
        for name, buf in self.traces.items():
            buf[i] = self._select(values[name])
        energy, loss = dyn.energy(S, res)
        self.series["energy"][i] = energy
        self.series["loss"][i] = loss
        for key, t in zip(SERIES_LAYER, (res.r, err, S[LAM], credit)):
            self.series[key][i] = _rms(t)
        grads = dyn.weight_gradients(S, res)
        dims = (-2, -1)
        dots = self._per_weight(lambda g, b: (g * b).sum(dim=dims), grads)
        norms = self._per_weight(lambda g, b: (g * g).sum(dim=dims), grads).sqrt()
        diff = self._per_weight(lambda g, b: (g - b).square().sum(dim=dims), grads).sqrt()
        self.series["bp_cos"][i] = dots / (norms * self.bp_norm)
        self.series["bp_relerr"][i] = diff / self.bp_norm
        self.recorded_steps.append(step)
        self._next = int(np.searchsorted(self.plan.steps, step, side="right"))

    def truncate(self, last_step: int) -> None:
        """Forget slots after ``last_step`` (a diverged run keeps its trace up to there)."""
        self.recorded_steps = [s for s in self.recorded_steps if s <= last_step]
        self._next = int(np.searchsorted(self.plan.steps, last_step, side="right"))

    def to_numpy(self) -> tuple[dict, dict]:
        n = len(self.recorded_steps)
        traces = {k: v[:n].cpu().numpy() for k, v in self.traces.items()}
        series = {k: v[:n].cpu().numpy() for k, v in self.series.items()}
        return traces, series
