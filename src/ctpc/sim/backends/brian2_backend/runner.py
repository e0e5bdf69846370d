"""Run the Brian2 network and fill the backend-neutral :class:`ctpc.results.run_result.RunResult`.

Recording:
* the traces (``record.variables`` x layers x samples x units) come from ``StateMonitor``s
  restricted to that selection, on a clock of ``record.every`` steps;
* the per-layer summaries (norms, energy, BP cosine) need every unit: numpy / cython hand the full
  state to the torch backend's own :class:`ctpc.sim.recording.Recorder` from a ``NetworkOperation``
  at each record step (nothing full-size is stored); cpp_standalone cannot call Python during
  the run, so it keeps full-state monitors at the record steps and reduces them afterwards.
* the final state is read from the groups after the run; its traces, its summaries and the final
  weight read-out ``grad_w*`` are computed by the same torch code as the torch backend.

Divergence: every layer carries ``diverged_step``, set by Brian2 code on the first step whose
state is non-finite or beyond ``integrator.divergence_bound`` (exact, per step). Runtime targets
stop the run at the next check (every ``integrator.check_every`` steps); then the run is
repeated up to the last bounded step, so the saved trace ends there, as with torch.

Randomness (noise, spiking error neurons): Brian2 is seeded from the config seed
(``b2.seed(cfg.seed)``) before every (re)run, so a run is reproducible and a diverged run's
repetition draws the same numbers. Brian2's random numbers are not torch's: a noisy Brian2 run
is another realisation of the same stochastic process as the torch run, not the same path.
Spikes are recorded by SpikeMonitors (:func:`.network.add_spike_monitors`) and returned as a
:class:`ctpc.results.run_result.SpikeRecord`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass

import brian2 as b2
import numpy as np
import torch
from tqdm.auto import tqdm

from ctpc.config.schema import Config, ConfigError
from ctpc.core.engine import divergence_bounds, divergence_reason, peak
from ctpc.build.resolve import load_config
from ctpc.build.objects import build_model
from ctpc.sim.recording import Recorder, RecordPlan, plan_recording
from ctpc.core.reference import bp_reference
from ctpc.results.run_result import RunResult, SpikeRecord
from ctpc.sim.backends.brian2_backend import targets
from ctpc.sim.backends.brian2_backend.equations import (BRIAN2_METHOD_ORDER, SLOT_OBSERVE,
    SLOT_STOP, ModelSpec, model_spec)
from ctpc.sim.backends.brian2_backend.network import (Brian2Net, add_spike_monitors,
    add_state_monitors, add_trace_monitors, assemble_objects, is_runtime)


@dataclass
class Outcome:
    recorder: Recorder              # per-layer summaries at the record steps run
    traces: dict[str, np.ndarray]   # var -> [slots, layers, 1, samples, units] (StateMonitors)
    final: torch.Tensor             # S [P, H, 1, B, N] at the last step run
    steps_run: int                  # ctpc steps
    diverged_step: int | None       # first ctpc step out of bounds
    timings: dict = dataclasses.field(default_factory=dict)   # s: Brian2 run, compile
    spikes: SpikeRecord | None = None   # spiking error neurons


class _Context:
    """What every (re)run of one config shares: the torch-side model (one replica) and its
    params, BP, record plan."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.plan, self.spec = check(cfg)                 # refuses what cannot run first
        self.model = build_model(cfg, torch.device("cpu"))
        self.dtype = self.model.net.dtype
        self.p = self.model.params()
        self.bp = bp_reference(self.model.net, self.model.weights, self.model.x, self.model.y)
        # the same per-run bound as the torch backend (divergence_bound or growth_bound)
        it = cfg.integrator
        self.spec.constants["bound"] = (float(divergence_bounds(
            self.model.dyn.initial_state(self.p), it.divergence_bound, it.growth_bound)[0]), "1")

    def recorder(self, plan: RecordPlan | None = None) -> Recorder:
        return Recorder(self.model.dyn, plan or self.plan, self.bp, replicas=1)


def check(cfg: Config) -> tuple[RecordPlan, ModelSpec]:
    """What a Brian2 run of ``cfg`` refuses before it builds anything (ConfigError): oversized
    traces, and for cpp_standalone its full-state monitors (:func:`check_state_monitor_size`).
    Returns the record plan and model spec. A sweep calls it for every Brian2 cell before any
    cell runs (:func:`ctpc.sim.simulation.check_simulation`)."""
    plan = plan_recording(cfg)
    spec = model_spec(cfg)
    if cfg.brian2.target == "cpp_standalone":
        check_state_monitor_size(cfg, plan, spec)
    return plan, spec


def check_state_monitor_size(cfg: Config, plan: RecordPlan, spec: ModelSpec) -> None:
    itemsize = 4 if cfg.dtype == "float32" else 8
    n_pop = 3 if spec.leaky else 2
    mb = len(plan.steps) * n_pop * spec.n_hidden * spec.batch * spec.width * itemsize / 2**20
    if mb > cfg.record.max_mb:
        raise ConfigError(
            f"record: brian2.target cpp_standalone keeps the full state of every layer at each "
            f"record step to compute the per-layer summaries after the run: {mb:,.0f} MB "
            f"({len(plan.steps)} record steps), above record.max_mb = {cfg.record.max_mb:g}. "
            f"Raise record.every (now {cfg.record.every}) or record.max_mb, or use brian2.target "
            f"numpy / cython, which reduce the state during the run.")


def _trace_array(monitors, plan: RecordPlan, var: str) -> np.ndarray:
    """[T, layers, 1, samples, units] from the per-layer monitors."""
    n_s, n_u = len(plan.samples), len(plan.units)
    per_layer = [np.asarray(getattr(monitors[int(l)], var)).T.reshape(-1, 1, n_s, n_u)
                 for l in plan.layers]
    return np.stack(per_layer, axis=1)


def _progress(total: int, enabled: bool, desc: str):
    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)

    def report(elapsed, completed, start, duration):
        bar.n = int(round(completed * total))
        bar.refresh()
    return bar, report


def simulate_steps(ctx: _Context, n_steps: int, progress: bool, watch: bool) -> Outcome:
    """Build and run the Brian2 network for ``n_steps`` ctpc steps."""
    cfg = ctx.cfg
    if n_steps == 0:   # nothing to integrate (diverged on the first step): the initial state
        S0 = ctx.model.dyn.initial_state(ctx.p)
        rec = ctx.recorder(dataclasses.replace(ctx.plan, variables=()))
        empty = {v: np.zeros((0, len(ctx.plan.layers), 1, len(ctx.plan.samples),
                              len(ctx.plan.units))) for v in ctx.plan.variables}
        return Outcome(rec, empty, S0, 0, None)
    standalone = cfg.brian2.target == "cpp_standalone"
    project = targets.standalone_dir(cfg, ctx.spec.structure_hash()) if standalone else None
    # cython compiles while objects are created (synapse creation is code too): both the
    # assembly and the run are inside the compile-error translation
    note = targets.build_note(cfg, ctx.spec.structure_hash()) if progress else None
    if note:
        print(f"ctpc: {note}", file=sys.stderr, flush=True)
    with targets.session(cfg), _compile_errors(cfg, project), np.errstate(all="ignore"):
        if ctx.spec.noisy or ctx.spec.spiking:
            b2.seed(cfg.seed)    # (numpy's global generator too, on the runtime targets)
        run = _assemble(ctx, n_steps, watch)
        bar, report = _progress(n_steps, progress and not standalone,
                                f"{cfg.name or 'ctpc'} {cfg.integrator.scheme} "
                                f"brian2/{cfg.brian2.target}")
        t0 = time.perf_counter()
        with bar:
            run.bn.net.run(n_steps * ctx.spec.inner_steps * run.bn.sim_clock.dt,
                           namespace=run.bn.namespace, report=report if progress else None,
                           report_period=0.5 * b2.second)
        if not standalone:
            # runtime: the run includes creating (cython: loading or compiling) code objects
            targets.mark_built(cfg, ctx.spec.structure_hash())
            return _collect(ctx, run, n_steps, {"brian2_run_s": time.perf_counter() - t0})
        with targets.project_lock(project):
            b2.device.build(directory=str(project), compile=True, run=True, with_output=False)
            targets.mark_built(cfg, ctx.spec.structure_hash())
            timers = b2.get_device().timers
            return _collect(ctx, run, n_steps, {"brian2_run_s": timers["run_binary"],
                                                "brian2_compile_s": timers["compile"]["make"]})


@dataclass
class _Assembled:
    bn: Brian2Net
    monitors: dict                  # layer -> trace StateMonitor
    state_monitors: list            # cpp_standalone: full-state monitors per layer
    recorder: Recorder              # per-layer summaries (no traces)
    spike_monitors: dict = dataclasses.field(default_factory=dict)   # (layer, sign) -> monitor

    def ctpc_step(self, t) -> int:
        brian_step = int(round(float(t / self.bn.sim_clock.dt)))
        return brian_step // self.bn.spec.inner_steps


def _assemble(ctx: _Context, n_steps: int, watch: bool) -> _Assembled:
    cfg, plan, inner = ctx.cfg, ctx.plan, ctx.spec.inner_steps
    bn = assemble_objects(ctx.spec, cfg, ctx.model, ctx.p, min(cfg.record.every, n_steps),
                          cfg.brian2.construction)
    run = _Assembled(bn, add_trace_monitors(bn, plan), [],
                     ctx.recorder(dataclasses.replace(plan, variables=())),
                     add_spike_monitors(bn, plan))
    if cfg.brian2.target == "cpp_standalone":
        run.state_monitors = add_state_monitors(bn)
        return run

    def summarise(t):
        run.recorder.record(run.ctpc_step(t), bn.state_tensor(ctx.dtype).unsqueeze(2), ctx.p)
    bn.net.add(b2.NetworkOperation(summarise, clock=bn.record_clock, when=SLOT_OBSERVE[0],
                                   order=SLOT_OBSERVE[1], name="summaries"))
    if watch:
        check_every = min(cfg.integrator.check_every, n_steps)
        check_clock = b2.Clock(bn.sim_clock.dt * check_every * inner, name="check_clock")

        def stop_if_diverged():
            if bn.first_diverged_step() is not None:
                bn.net.stop()
        bn.net.add(b2.NetworkOperation(stop_if_diverged, clock=check_clock, when=SLOT_STOP[0],
                                       order=SLOT_STOP[1], name="stop_if_diverged"))
    return run


class _compile_errors:
    """Re-raise a failed compile as Brian2BuildError (names the target and the fallback)."""

    def __init__(self, cfg, project):
        self.cfg, self.project = cfg, project

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, targets.Brian2BuildError):
            return False
        where = self.project
        if where is None and self.cfg.brian2.target == "cython":
            where = targets.build_dir(self.cfg) / "cython"
        failure = targets.compile_failure(exc, self.cfg, where)
        if failure is not None:
            raise failure from exc
        return False


def _collect(ctx: _Context, run: _Assembled, n_steps: int, timings: dict) -> Outcome:
    bn, rec, spec = run.bn, run.recorder, ctx.spec
    brian_steps = (int(bn.sim_clock.variables["timestep"].get_value()[0]) if is_runtime()
                   else n_steps * spec.inner_steps)
    steps_run = brian_steps // spec.inner_steps
    bad = bn.first_diverged_step()
    diverged = None if bad is None else math.ceil(bad / spec.inner_steps)
    if diverged is None and steps_run != n_steps:
        raise RuntimeError(f"Brian2 ran {brian_steps} of the {n_steps * spec.inner_steps} steps "
                           "asked for without diverging (a scheduling problem: please report it)")
    if run.state_monitors:   # cpp_standalone: reduce the recorded full states now
        names = ["h", "lam"] + (["err"] if spec.leaky else [])
        columns = {v: [np.asarray(getattr(m, v)) for m in run.state_monitors] for v in names}
        for i, t in enumerate(run.state_monitors[0].t):
            S = np.stack([np.stack([c[:, i].reshape(1, spec.batch, spec.width)
                                    for c in columns[v]]) for v in names])
            rec.record(run.ctpc_step(t), torch.as_tensor(S, dtype=ctx.dtype), ctx.p)
    traces = {v: _trace_array(run.monitors, ctx.plan, v) for v in ctx.plan.variables}
    return Outcome(rec, traces, bn.state_tensor(ctx.dtype).unsqueeze(2), steps_run, diverged,
                   timings, _spike_record(run.spike_monitors, ctx.plan, spec.width))


def _spike_record(monitors: dict | None, plan: RecordPlan, width: int) -> SpikeRecord | None:
    """The SpikeMonitors' spikes of the recorded (layer, sign, sample, unit) neurons, ordered
    layer, sign (+ then -), sample, unit, and each neuron's spikes by time (a ragged array).
    ``monitors`` None: a spiking run that ran no step (every neuron has count 0)."""
    if monitors is not None and not monitors:
        return None
    rows, counts, times = [], [], []
    for l in plan.layers:
        for sign in (1, -1):
            if monitors is None:
                idx, t = np.zeros(0, dtype=np.int64), np.zeros(0)
            else:
                mon, first = monitors[(int(l), sign)]
                idx = np.asarray(mon.i[:], dtype=np.int64) + first   # neuron of the group
                t = np.asarray(mon.t[:] / b2.ms, dtype=np.float64)
            order = np.lexsort((t, idx))                              # by neuron, then time
            idx, t = idx[order], t[order]
            wanted = (plan.samples[:, None] * width + plan.units[None, :]).ravel()
            start = np.searchsorted(idx, wanted, side="left")
            stop = np.searchsorted(idx, wanted, side="right")
            for k, neuron in enumerate(wanted):
                rows.append((int(l), sign, int(neuron // width), int(neuron % width)))
                counts.append(stop[k] - start[k])
                times.append(t[start[k]:stop[k]])
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    return SpikeRecord(layer=rows[:, 0], sign=rows[:, 1], sample=rows[:, 2], unit=rows[:, 3],
                       count=np.asarray(counts, dtype=np.int64),
                       times=np.concatenate(times) if times else np.zeros(0))


# Measured (docs/guide/brian2.md): rk2/heun/rk4 converge at order 1.0 on brian2.
FIRST_ORDER_NOTE = (
    "brian2: summed variables (predictions, feedback) are updated once per time step, so "
    "method {method!r} treats the inter-layer coupling at first order: the run converges at "
    "order 1 in dt (measured slope 0.99), not {order}. Use backend torch for a higher-order "
    "integration, or brian2 with euler to match torch step for step.")


def run(cfg: Config, progress: bool = True) -> RunResult:
    t0 = time.perf_counter()
    ctx = _Context(cfg)
    order = BRIAN2_METHOD_ORDER[ctx.spec.method]
    if order > 1 and not ctx.spec.gauss_seidel:
        warnings.warn(FIRST_ORDER_NOTE.format(method=ctx.spec.method, order=order),
                      stacklevel=2)
    n = cfg.integrator.n_steps
    out = simulate_steps(ctx, n, progress, watch=True)
    reason = None
    if out.diverged_step is not None:
        # Repeat the run up to the last bounded step: its state is the final one, and the
        # trace ends there (the torch backend replays its last chunk the same way). The reason
        # is read from the state where the run stopped (the next check, at or after the
        # diverged step).
        diverged_step = out.diverged_step
        reason = divergence_reason(float(peak(out.final)[0]), cfg.integrator.divergence_bound)
        out = simulate_steps(ctx, diverged_step - 1, False, watch=False)
    else:
        diverged_step = None
    b2c = cfg.brian2
    spiking = ({"brian2_errors": "spiking", "brian2_r_max": b2c.r_max, "brian2_r_max_units": "Hz",
                "brian2_e_max": b2c.e_max} if ctx.spec.spiking else {})
    if ctx.spec.noisy or ctx.spec.spiking:
        spiking["brian2_random"] = (f"Brian2 random numbers seeded with b2.seed({cfg.seed}): the "
                                    "same law as a torch run, not the same realisation")
    result = out.recorder.results(
        out.final, ctx.p, [out.steps_run], [diverged_step], dt=[cfg.integrator.dt],
        reasons=[reason],
        backend="brian2", device="cpu", t0=t0, slot_traces=out.traces,
        extra_attrs={"brian2_version": b2.__version__, "brian2_target": cfg.brian2.target,
                     "brian2_construction": cfg.brian2.construction,
                     "brian2_method": ctx.spec.method,
                     "brian2_schedule": "gauss_seidel" if ctx.spec.gauss_seidel else "explicit",
                     # summed variables are constant within a step: coupling is first order
                     "brian2_coupling_order": 1, **spiking, **out.timings})[0]
    result.spikes = out.spikes
    if ctx.spec.spiking and result.spikes is None:     # diverged on the first step: no spikes
        result.spikes = _spike_record(None, ctx.plan, ctx.spec.width)
    return result


def build(cfg, edit=None) -> Brian2Net:
    """The model as Brian2 objects, initial state set, not run: for extending it in Brian2.

    ``cfg``: a Config, YAML path or dict (validated like everywhere else); ``edit``: an optional
    function that may change the :class:`~.model.ModelSpec` (equations, constants) before the
    objects are created. Runtime targets only (numpy, cython); the target and float precision
    are set as Brian2 preferences and left set. Run it with
    ``bn.net.run(duration, namespace=bn.namespace)``.
    """
    cfg = load_config(cfg)
    if cfg.brian2.target == "cpp_standalone":
        raise ConfigError("brian2_backend.build() returns runtime objects: use brian2.target "
                          "numpy or cython (cpp_standalone runs through ctpc.simulate)")
    ctx = _Context(cfg)
    if edit is not None:
        edit(ctx.spec)
    b2.prefs["codegen.target"] = cfg.brian2.target
    b2.prefs["core.default_float_dtype"] = np.float64 if cfg.dtype == "float64" else np.float32
    return assemble_objects(ctx.spec, cfg, ctx.model, ctx.p, 1, cfg.brian2.construction)

