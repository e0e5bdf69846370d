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

from ctpc.build.resolved import Resolved
from ctpc.config.schema import Config
from ctpc.core.dynamics import POP_H, POP_LAM, Dynamics, Params
from ctpc.results.memory import RECORD_CHUNK_BYTES, check_trace_size, record_slot_bytes
from ctpc.core.network import Residuals, Weights, energy, loss, phi_into, weight_readout_slots
from ctpc.core.reference import BPReference
from ctpc.results.run_result import SERIES_LAYER, SERIES_SCALAR, SERIES_WEIGHT, RunResult


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
    # built, which for a huge integrator.steps would itself not fit. Resolving a simulation
    # config made it already (a training config's: here, once).
    if not (isinstance(cfg, Resolved) and cfg.trace_checked):
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


def weight_norms(w: Weights) -> torch.Tensor:
    """[L, R] Euclidean norm of each layer's parameters (W_l, and b_l with biases)."""
    return _per_layer([[torch.linalg.vector_norm(b, dim=-1) for b in kind]
                       for kind in w.layer_blocks()])


def _per_layer(kinds: list[list[torch.Tensor]], squares: bool = False) -> torch.Tensor:
    """Per-layer norms (or, with ``squares``, sums) from per-block ones of each parameter kind
    (:meth:`Weights.layer_blocks`): one kind is its rows, several combine in quadrature."""
    rows = [torch.cat(kind) for kind in kinds]
    if len(rows) == 1 or squares:
        return sum(rows)
    return sum(r.square() for r in rows).sqrt()


def alignment(est: Weights, ref: Weights, ref_norm: torch.Tensor | None = None,
              scratch: Weights | None = None):
    """(cosine [L, R], relative error [L, R]) of each layer's estimated parameter update
    against BP's (W_l, and b_l with biases, as one vector per layer). ``ref_norm``:
    :func:`weight_norms` of ``ref`` when known (it is constant over a run).

    ``est`` may hold K estimates per replica (a slot axis after the replica axis: w_in
    [R, K, N, D], w_mid [H-1, R, K, N, N], w_out [R, K, O, N]); the results are then
    [L, R, K], each estimate against its replica's reference.

    An estimate that is exactly zero (e.g. every hidden layer at the feed-forward start, where
    r = 0 and lambda = 0) has cosine 0: it carries no alignment. ``scratch``: buffers shaped
    like ``est`` for the products and differences (else allocated)."""
    ref_norm = weight_norms(ref) if ref_norm is None else ref_norm
    slots = est.w_in.dim() > ref.w_in.dim()
    if slots:
        ref_norm = ref_norm.unsqueeze(-1)
    dots, norms, diff = [], [], []
    tmp_kinds = (scratch or est.map(torch.empty_like)).layer_blocks()
    for mine, theirs, tmps in zip(est.layer_blocks(), ref.layer_blocks(), tmp_kinds):
        dots.append([]), norms.append([]), diff.append([])
        for g, b, tmp in zip(mine, theirs, tmps):
            b = b.unsqueeze(-2) if slots else b
            dots[-1].append(torch.mul(g, b, out=tmp).sum(-1))
            norms[-1].append(torch.linalg.vector_norm(g, dim=-1))
            diff[-1].append(torch.linalg.vector_norm(torch.sub(g, b, out=tmp), dim=-1))
    dots, norms, diff = _per_layer(dots, squares=True), _per_layer(norms), _per_layer(diff)
    cos = torch.where(norms > 0, dots / (norms * ref_norm), torch.zeros_like(dots))
    return cos, diff / ref_norm


class Recorder:
    """Preallocated device buffers for R replicas; ``record`` writes one time slot (all replicas
    at the same step), and nothing is copied to the host until :meth:`results` (or, streaming,
    until a chunk is complete).

    A record step only *stages* what it sees (three copies: the state, and the residuals and
    output as the solver carries them, exact); the summaries (norms, energy, the weight
    read-out and its BP alignment) and the traces of a chunk of up to K staged slots are then
    computed together, in ~30 batched operators, when the chunk is full or the run ends. The
    numbers are those of summarising each slot on its own (same formulas; the K slots ride the
    batch axis), at the launch cost of one slot. K is set by
    :data:`ctpc.results.memory.RECORD_CHUNK_BYTES`.

    ``stream``: a :class:`ctpc.results.stream.RecordStream`. Each summarised chunk is then copied to
    the host and appended to it, and the device buffers hold one chunk, not the whole run."""

    def __init__(self, dyn: Dynamics, plan: RecordPlan, bp: BPReference, replicas: int,
                 stream=None):
        self.dyn, self.plan, self.bp, self.replicas = dyn, plan, bp, replicas
        self.chunk_bytes = RECORD_CHUNK_BYTES       # read here: a test or benchmark may set it
        self.stream = stream
        net = dyn.net
        dev = net.device
        self.traces: dict[str, torch.Tensor] = {}     # var -> [slots, layers, R, samples, units]
        self.series: dict[str, torch.Tensor] = {}     # name -> [slots, (layer | weight,) R]
        self.bp_norm = weight_norms(bp.grads)              # [L, R], constant over the run
        idx = lambda a: torch.as_tensor(a, device=dev, dtype=torch.long)
        self._layer_idx = None if plan.all_layers else idx(plan.layers - 1)
        self._sample_idx = None if plan.all_samples else idx(plan.samples)
        self._unit_idx = None if plan.all_units else idx(plan.units)
        self.slot_steps: list[int] = []
        self._next = 0   # index into plan.steps of the next step due
        # staging (allocated at the first record, when the batch size is known)
        self._stage_S = self._stage_r = self._stage_yhat = None
        self._chunk = 0          # K: slots per chunk
        self._first = 0          # slot index of the chunk's first staged slot
        self._staged = 0         # slots staged in the current chunk
        self._p: Params | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._last_grads: Weights | None = None    # read-out of the last slot summarised

    def _select(self, t: torch.Tensor) -> torch.Tensor:
        """[H, R, ..., B, N] -> [layers, R, ..., samples, units]."""
        if self._layer_idx is not None:
            t = t.index_select(0, self._layer_idx)
        if self._sample_idx is not None:
            t = t.index_select(t.dim() - 2, self._sample_idx)
        if self._unit_idx is not None:
            t = t.index_select(t.dim() - 1, self._unit_idx)
        return t

    def due(self, step: int) -> bool:
        return self._next < len(self.plan.steps) and self.plan.steps[self._next] == step

    def maybe_record(self, step: int, S: torch.Tensor, p: Params, residuals=None) -> None:
        """Record if ``step`` is due; ``residuals()`` gives the network pass at S when the
        caller has it already (the Gauss-Seidel carry does), else it is computed."""
        if self.due(step):
            self.record(step, S, p, residuals() if residuals is not None else None)

    def _values(self, S: torch.Tensor, p: Params, resid, credit_out=None):
        """The traced variables at S (the credit into ``credit_out`` if given)."""
        err, credit = self.dyn.error(S, resid), self.dyn.credit(S, resid, p, out=credit_out)
        return {"h": S[POP_H], "lam": S[POP_LAM], "err": err, "credit": credit}

    # ------------------------------------------------------------------ staging
    def _allocate(self, S: torch.Tensor, p: Params) -> None:
        P, H, R, B, N = S.shape
        left = len(self.plan.steps) + 1 - len(self.slot_steps)
        slot = record_slot_bytes(P, H, R, B, N, p.x.shape[-1], p.y.shape[-1], S.element_size())
        K = max(1, min(left, self.chunk_bytes // slot))
        self._chunk = K
        # the summary buffers: every slot of the run, or one chunk when streaming. Empty, not
        # zeros: a slot is only ever read after it was written.
        n_t = K if self.stream is not None else len(self.plan.steps) + 1
        _, l, s, u = self.plan.trace_shape
        self.traces = {v: S.new_empty(n_t, l, R, s, u) for v in self.plan.variables}
        self.series = {k: S.new_empty(n_t, R) for k in SERIES_SCALAR}
        self.series |= {k: S.new_empty(n_t, H, R) for k in SERIES_LAYER}
        self.series |= {k: S.new_empty(n_t, H + 1, R) for k in SERIES_WEIGHT}
        if K > 1:    # one slot per chunk is summarised from the live tensors: no staging
            self._stage_S = S.new_empty(P, H, R, K * B, N)
            self._stage_r = S.new_empty(H, R, K * B, N)
            self._stage_yhat = S.new_empty(R, K * B, p.y.shape[-1])

    def _stage(self, S: torch.Tensor, p: Params, resid) -> None:
        """Copy the state and its network pass into the next staged slot (flush when full).
        With one slot per chunk (large states) there is nothing to batch: the slot is
        summarised at once from the tensors given, without the staging copies."""
        if self._p is not None and p is not self._p:
            self._flush()                    # new parameters: summarise what was staged
        if self._chunk == 0:
            self._allocate(S, p)
        self._p = p
        resid = self.dyn.residuals(S, p) if resid is None else resid
        if self._chunk == 1:
            self._summarise(S, resid.r, resid.y_hat, resid.a, 1)
            return
        B, j = S.shape[3], self._staged
        rows = slice(j * B, (j + 1) * B)
        self._stage_S[:, :, :, rows].copy_(S)
        self._stage_r[:, :, rows].copy_(resid.r)
        self._stage_yhat[:, rows].copy_(resid.y_hat)
        self._staged += 1
        if self._staged == self._chunk:
            self._flush()

    def _flush(self) -> None:
        """Summarise the staged slots."""
        k = self._staged
        if k == 0:
            return
        rows = slice(0, k * self._stage_S.shape[3] // self._chunk)
        S = self._stage_S[:, :, :, rows]                        # [P, H, R, kB, N]
        self._summarise(S, self._stage_r[:, :, rows], self._stage_yhat[:, rows], None, k)
        self._staged = 0

    def _scratch(self, name: str, like: torch.Tensor, *shape: int) -> torch.Tensor:
        """A temporary of the summary, kept from one chunk to the next: a run allocates each
        once, not once per chunk (fresh allocations of MBs cost page faults every time)."""
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = self._buffers[name] = like.new_empty(shape)
        return buf

    def _summarise(self, S: torch.Tensor, r: torch.Tensor, y_hat: torch.Tensor,
                   a: torch.Tensor | None, k: int) -> None:
        """Summaries and traces of k slots into the next k time slots, in one batched pass.
        S [P, H, R, kB, N], r [H, R, kB, N], y_hat [R, kB, O]: k groups of B samples,
        slot-major; a = phi(h) if known (else computed into a scratch buffer)."""
        p, net = self._p, self.dyn.net
        P, H, R, kB, N = S.shape
        B = kB // k
        if a is None:
            a = phi_into(net.activation, S[POP_H], self._scratch("a", r, H, R, kB, N))
        values = self._values(S, p, Residuals(r, y_hat, a),
                              credit_out=self._scratch("credit", r, H, R, kB, N))
        err, credit, rho = values["err"], values["credit"], p.rates.rho
        first = 0 if self.stream is not None else self._first
        slots = slice(first, first + k)
        per_slot = lambda t: t.unflatten(-2, (k, B))             # [..., R, k, B, N]
        for name, buf in self.traces.items():
            buf[slots] = self._select(per_slot(values[name])).movedim(2, 0)
        # RMS over the batch of each sample's norm = ||t_l||_F / sqrt(B): one reduction each
        # (with instantaneous error neurons err is r: its norm is not taken twice)
        norm_of = lambda t: torch.linalg.vector_norm(per_slot(t), dim=(-2, -1))   # [H, R, k]
        res_norm = norm_of(r)
        norms = (res_norm, res_norm if err is r else norm_of(err), norm_of(S[POP_LAM]),
                 norm_of(credit))
        for key, norm in zip(SERIES_LAYER, norms):
            self.series[key][slots] = (norm * (1.0 / math.sqrt(B))).movedim(2, 0)
        # energy and loss per slot (ctpc.core.network.loss and .energy, per group of B
        # samples); sum r^2 is the square of the residual norms just taken
        out_err = torch.sub(per_slot(y_hat), p.y.unsqueeze(1))                   # [R, k, B, O]
        l = loss(out_err)                                                        # [R, k]
        rho_k = rho.view(-1, 1) if isinstance(rho, torch.Tensor) else rho
        lam_r = torch.mul(S[POP_LAM], r, out=self._scratch("prod", r, H, R, kB, N))
        self.series["energy"][slots] = energy(l, per_slot(lam_r).sum(dim=(0, 3, 4)),
                                              res_norm.square().sum(0), rho_k, B).T
        self.series["loss"][slots] = l.T
        grads = self._last_grads = self._slot_weight_gradients(a, credit, out_err, k)
        scratch = grads.like(self._scratch(f"tmp{i}", t, *t.shape)
                             for i, t in enumerate(grads.tensors))
        cos, rel = alignment(grads, self.bp.grads, self.bp_norm, scratch)       # [L, R, k]
        self.series["bp_cos"][slots] = cos.movedim(2, 0)
        self.series["bp_relerr"][slots] = rel.movedim(2, 0)
        if self.stream is not None:
            host = {f"trace_{v}": b[:k] for v, b in self.traces.items()}
            host |= {f"series_{v}": b[:k] for v, b in self.series.items()}
            self.stream.append({v: b.cpu().numpy() for v, b in host.items()})
        self._first += k

    def _slot_weight_gradients(self, a: torch.Tensor, g: torch.Tensor, out_err: torch.Tensor,
                               k: int) -> Weights:
        """The read-out of k slots at once (:func:`ctpc.core.network.weight_readout_slots`,
        the restatement of :func:`~ctpc.core.network.weight_readout` for many slots) into
        this recorder's scratch buffers: a, g [H, R, k*B, N] hold k groups of B samples,
        out_err = y_hat - y [R, k, B, O]. Returns each tensor with a slot axis after its
        replica axis: each slot's batch-mean read-out."""
        net = self.dyn.net
        return weight_readout_slots(g, a, out_err, self._p.x, k,
                                    (net.s_in, net.s_mid, net.s_out), net.bias, self._scratch)

    def record(self, step: int, S: torch.Tensor, p: Params, resid=None) -> None:
        """Record the state at ``step`` (every replica) in the next free slot: staged now,
        summarised with its chunk (see the class note)."""
        self._stage(S, p, resid)
        self.slot_steps.append(step)
        self._next = int(np.searchsorted(self.plan.steps, step, side="right"))

    def results(self, S: torch.Tensor, p: Params, steps_completed, diverged_step, *, dt,
                backend: str, device: str, t0: float, extra_attrs=None,
                slot_traces: dict | None = None, reasons=None,
                residuals=None) -> list[RunResult]:
        """The per-replica results of a finished run: ``S`` is the final state of every replica
        (a diverged replica's last bounded state), ``steps_completed[r]`` its step, and
        ``diverged_step[r]`` the first out-of-bounds step or None. ``dt[r]`` in ms.

        ``slot_traces``: traces recorded elsewhere (the Brian2 backend's StateMonitors), var ->
        [slots, layers, R, samples, units] for the slots recorded so far; the final state's
        traces are added here, from ``S``, as for the recorder's own buffers. ``residuals()``: the
        network pass at ``S`` as the solver sees it (a delayed network's residuals are against
        the delayed predictions), for the final slot when one is added; default: computed from
        S by the undelayed pass."""
        slot_steps = np.asarray(self.slot_steps, dtype=np.int64)
        done = np.asarray(steps_completed, dtype=np.int64)
        n = len(slot_steps)
        # Usually every replica's final state is the last recorded slot already; otherwise
        # (a replica diverged between record steps) one more slot holds each final state.
        extra = not (n and (slot_steps[-1] == done).all() and not slot_traces)
        if extra:
            self._stage(S, p, residuals() if residuals is not None else None)
        self._flush()
        # the final read-out: the last slot summarised is every replica's final state
        last = self._last_grads
        grads = last.like(t.select(axis + 1, -1).clone()        # the last slot of each
                          for t, axis in zip(last.tensors, last.replica_axes))
        host = lambda t: t.detach().cpu().numpy()        # no copy on the CPU
        used = n + extra
        if self.stream is not None:      # lazily read back from the stream, chunk by chunk
            lazy = self.stream.finish()
            traces = {k: lazy[f"trace_{k}"][:used] for k in self.plan.variables}
            series = {k: lazy[f"series_{k}"][:used] for k in self.series}
        else:
            traces = {k: host(v[:used]) for k, v in self.traces.items()}
            series = {k: host(v[:used]) for k, v in self.series.items()}
        if slot_traces:
            with torch.no_grad():
                values = self._values(S, p, self.dyn.residuals(S, p))
            for k, v in slot_traces.items():
                traces[k] = np.concatenate([v[:n], host(self._select(values[k]))[None]])
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

