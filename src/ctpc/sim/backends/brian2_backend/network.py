"""Turn a :class:`~.model.ModelSpec` into Brian2 objects with the fixed schedule.

Everything numeric comes from the torch side (:func:`ctpc.build.objects.build_model`): the weights of
``init_weights``, the batch of ``load_batch``, the feed-forward initial state. Brian2 gets copies
of those arrays; nothing of the maths is re-derived here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import brian2 as b2
import numpy as np
from brian2.devices.device import RuntimeDevice
import torch

from ctpc.core.dynamics import POP_H, Params
from ctpc.build.objects import Model
from ctpc.sim.backends.brian2_backend.equations import (SLOT_FEEDBACK, SLOT_OBSERVE,
    SLOT_PREDICT_EXPLICIT, SLOT_PREDICT_GS, SLOT_SPIKES_EXPLICIT, SLOT_SPIKES_GS, ModelSpec,
    SynapsesSpec)
from ctpc.sim.backends.brian2_backend.methods import state_update_method


@dataclass
class Brian2Net:
    spec: ModelSpec
    net: b2.Network
    layers: list[b2.NeuronGroup]
    output: b2.NeuronGroup
    synapses: list[b2.Synapses]
    namespace: dict
    sim_clock: b2.Clock
    record_clock: b2.Clock
    extra: dict = field(default_factory=dict)   # construction-specific objects
    # brian2.errors: spiking: name -> Poisson group (layer_l_err_pos/neg) and its synapses
    error_groups: dict[str, b2.NeuronGroup] = field(default_factory=dict)
    error_synapses: dict[str, b2.Synapses] = field(default_factory=dict)

    def state_array(self, name: str) -> np.ndarray:
        """[H, B, N] copy of a layer variable (works before and after a standalone run)."""
        b, n = self.spec.batch, self.spec.width
        return np.stack([np.asarray(g.variables[name].get_value() if is_runtime()
                                    else getattr(g, name)[:]).reshape(b, n)
                         for g in self.layers])

    def state_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        """The full state [P, H, B, N] (P = 3 with leaky errors); ctpc.core.dynamics' layout with its
        replica axis (dim 2) removed: ``.unsqueeze(2)`` gives the torch state of one replica."""
        names = ["h", "lam"] + (["err"] if self.spec.leaky else [])
        return torch.as_tensor(np.stack([self.state_array(v) for v in names]), dtype=dtype)

    def first_diverged_step(self) -> int | None:
        """Earliest Brian2 step whose state left the bound, over all layers (None: none did)."""
        flags = self.state_array("diverged_step")
        bad = flags[flags >= 0]
        return int(bad.min()) if bad.size else None


def is_runtime() -> bool:
    return isinstance(b2.get_device(), RuntimeDevice)


def namespace(spec: ModelSpec) -> dict:
    ns = {}
    units = {"ms": b2.ms, "Hz": b2.Hz, "1/sqrt(ms)": b2.ms ** -0.5}
    for name, (value, unit) in spec.constants.items():
        ns[name] = value * units[unit] if unit in units else value
    return ns


def _set_slot(obj, slot: tuple[str, int]) -> None:
    obj.when, obj.order = slot


def _index_grid(batch: int, n_pre: int, n_post: int):
    """Dense connection within each sample, synapse order (sample, post unit, pre unit)."""
    b, post, pre = np.meshgrid(np.arange(batch), np.arange(n_post), np.arange(n_pre),
                               indexing="ij")
    return (b * n_pre + pre).ravel(), (b * n_post + post).ravel(), pre.ravel(), post.ravel()


def _make_synapses(s: SynapsesSpec, groups: dict, weights: list[np.ndarray], batch: int,
                   clock, gauss_seidel: bool, dtype) -> b2.Synapses:
    syn = b2.Synapses(groups[s.source], groups[s.target], model=s.model, clock=clock,
                      name=s.name)
    i, j, pre, post = _index_grid(batch, s.n_pre, s.n_post)
    syn.connect(i=i, j=j)
    syn.w = np.asarray(weights[s.weight][post, pre], dtype=dtype)
    if s.skip:
        syn.skip = (pre == post).astype(dtype)
    _set_slot(syn.summed_updaters[s.predict_var],
              SLOT_PREDICT_GS if gauss_seidel else SLOT_PREDICT_EXPLICIT)
    if s.feedback_var:
        _set_slot(syn.summed_updaters[s.feedback_var], SLOT_FEEDBACK)
    return syn


def assemble_objects(spec: ModelSpec, cfg, model: Model, p: Params, record_every: int,
                     construction: str) -> Brian2Net:
    """Brian2 objects for one run (``model``: the torch side, one replica), initial state set,
    not yet run."""
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    dt = cfg.integrator.dt * b2.ms
    sim_clock = b2.Clock(dt, name="sim_clock")
    record_clock = b2.Clock(dt * record_every * spec.inner_steps, name="record_clock")
    # (the caller caps record_every at the run length: Brian2 gives a clock whose dt exceeds
    # the run an end step of 0, and if it happens to be picked first nothing runs at all)
    groups = {}
    for g in spec.groups:
        kwargs = {} if g.method is None else {"method": state_update_method(g.method,
                                                                            spec.noisy)}
        groups[g.name] = b2.NeuronGroup(g.size, g.equations, clock=sim_clock, name=g.name,
                                        **kwargs)
    layers = [groups[n] for n in spec.layer_names]
    b, n = spec.batch, spec.width
    for name, units in (("input", spec.input_dim), ("output", spec.output_dim),
                        *((ln, n) for ln in spec.layer_names)):
        groups[name].sample = np.repeat(np.arange(b), units)
        groups[name].unit = np.tile(np.arange(units), b)
    groups["input"].x = model.x[0].cpu().numpy().astype(dtype).ravel()
    groups["output"].y = model.y[0].cpu().numpy().astype(dtype).ravel()

    # Initial state: feed-forward activities, lam = err = 0, and the predictions of that state
    # (the Gauss-Seidel schedule reads them before its first recomputation).
    S0 = model.dyn.initial_state(p)
    resid0 = model.dyn.residuals(S0, p)
    h0 = S0[POP_H, :, 0].cpu().numpy()
    pred0 = (S0[POP_H] - resid0.r)[:, 0].cpu().numpy()
    y_hat0 = resid0.y_hat[0].cpu().numpy()
    biases = model.weights.biases(0)
    if biases is not None:     # b is its own constant; pred and yhat hold the synaptic part
        biases = [bias.cpu().numpy() for bias in biases]
        for l, grp in enumerate(layers):
            grp.b = np.tile(biases[l], b).astype(dtype)
            pred0[l] -= biases[l]
        groups["output"].b = np.tile(biases[-1], b).astype(dtype)
        y_hat0 = y_hat0 - biases[-1]
    rates = next(op.code for op in spec.operations if op.name == "rates")
    for l, grp in enumerate(layers):
        grp.h = h0[l].ravel().astype(dtype)
        grp.pred = pred0[l].ravel().astype(dtype)
        grp.diverged_step = -1
        for line in rates.splitlines():    # phi, dphi of the initial state, by Brian2 itself
            var, expr = (part.strip() for part in line.split("=", 1))
            setattr(grp, var, expr)
    groups["output"].yhat = y_hat0.ravel().astype(dtype)

    objects = list(groups.values())
    synapses = []
    for op in spec.operations:
        for grp in layers:
            objects.append(grp.run_regularly(op.code, when=op.slot[0], order=op.slot[1],
                                             name=f"{grp.name}_{op.name}"))
    extra = {}
    if construction == "synapses":
        weights = [w.cpu().numpy() for w in model.weights.matrices(0)]
        for s in spec.synapses:
            synapses.append(_make_synapses(s, groups, weights, b, sim_clock, spec.gauss_seidel,
                                           dtype))
        objects += synapses
    else:
        from ctpc.sim.backends.brian2_backend.coupling import TorchCoupling
        coupling = TorchCoupling(spec, layers, groups["output"], model.net, p)
        extra["coupling"] = coupling
        objects += coupling.operations(sim_clock)
    error_groups, error_synapses = _spiking_objects(spec, groups, sim_clock)
    objects += list(error_groups.values()) + list(error_synapses.values())
    for grp in layers:
        if spec.spiking:       # the decoded error starts at 0, like the rate model's e
            grp.err = 0
    net = b2.Network(objects, name="ctpc_network")
    return Brian2Net(spec, net, layers, groups["output"], synapses, namespace(spec), sim_clock,
                     record_clock, extra, error_groups, error_synapses)


def _spiking_objects(spec: ModelSpec, groups: dict, clock):
    """Poisson error neurons (linked to their layer's h, pred[, b]) and their one-to-one
    synapses onto the layer's decoded error (equations.SpikingSpec)."""
    pops, syns = {}, {}
    for e in spec.spiking:
        grp = b2.NeuronGroup(e.size, e.equations, threshold=e.threshold, clock=clock,
                             name=e.name)
        layer = groups[e.layer]
        for link in e.links:
            mine, theirs = (part.strip() for part in link.split("="))
            setattr(grp, mine, b2.linked_var(layer, theirs))
        _set_slot(grp.thresholder["spike"],
                  SLOT_SPIKES_GS if spec.gauss_seidel else SLOT_SPIKES_EXPLICIT)
        syn = b2.Synapses(grp, layer, on_pre=e.on_pre, clock=clock, name=f"{e.name}_syn")
        syn.connect(j="i")
        pops[e.name], syns[e.name] = grp, syn
    return pops, syns


def add_spike_monitors(bn: Brian2Net, plan) -> dict[tuple[int, int], b2.SpikeMonitor]:
    """SpikeMonitors of the spiking error neurons of the recorded layers (record.layers), one
    per sign, on the contiguous block of neurons that holds the recorded samples (the units and
    samples outside record.* are dropped after the run: a Brian2 subgroup must be contiguous).
    Returns (layer, sign) -> (monitor, first neuron index of its block)."""
    if not bn.spec.spiking:
        return {}
    n = bn.spec.width
    first, last = int(plan.samples.min()) * n, (int(plan.samples.max()) + 1) * n
    mons = {}
    for e in bn.spec.spiking:
        l = int(e.layer.split("_")[1])
        if l not in set(int(x) for x in plan.layers):
            continue
        grp = bn.error_groups[e.name]
        mon = b2.SpikeMonitor(grp[first:last] if (first, last) != (0, grp.N) else grp,
                              name=f"spikes_{e.name}")
        bn.net.add(mon)
        mons[(l, e.sign)] = (mon, first)
    return mons


def add_trace_monitors(bn: Brian2Net, plan) -> dict[int, b2.StateMonitor]:
    """StateMonitors restricted to what ``record`` selects: variables, layers, (sample, unit)."""
    if not plan.variables:
        return {}
    idx = (plan.samples[:, None] * bn.spec.width + plan.units[None, :]).ravel()
    monitors = {}
    for l in plan.layers:
        mon = b2.StateMonitor(bn.layers[l - 1], list(plan.variables), record=idx,
                              clock=bn.record_clock, name=f"trace_layer_{l}")
        _set_slot(mon, SLOT_OBSERVE)
        bn.net.add(mon)
        monitors[int(l)] = mon
    return monitors


def add_state_monitors(bn: Brian2Net) -> list[b2.StateMonitor]:
    """Full-state monitors (cpp_standalone: the per-layer summaries are computed after the run)."""
    names = ["h", "lam"] + (["err"] if bn.spec.leaky else [])
    mons = []
    for grp in bn.layers:
        mon = b2.StateMonitor(grp, names, record=True, clock=bn.record_clock,
                              name=f"state_{grp.name}")
        _set_slot(mon, SLOT_OBSERVE)
        bn.net.add(mon)
        mons.append(mon)
    return mons
