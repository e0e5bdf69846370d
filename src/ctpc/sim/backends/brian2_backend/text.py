"""``equations_text(cfg)``: the model as a Brian2 user reads it (``--show-equations``)."""
from __future__ import annotations

import textwrap

from ctpc.config.schema import Config
from ctpc.sim.backends.brian2_backend.methods import method_description
from ctpc.sim.backends.brian2_backend.equations import (SLOT_BOUNDS, SLOT_DUAL, SLOT_FEEDBACK,
    SLOT_MULTIPLIER, SLOT_OBSERVE, SLOT_PREDICT_EXPLICIT, SLOT_PREDICT_GS, SLOT_RATES_EXPLICIT,
    SLOT_RATES_GS, SLOT_SPIKES_EXPLICIT, SLOT_SPIKES_GS, ModelSpec, model_spec)

UNIT_TEXT = {"ms": " * ms", "Hz": " * Hz", "1/sqrt(ms)": " / sqrt(ms)"}


def _indent(text: str) -> str:
    return textwrap.indent(text, "    ")


def _schedule(spec: ModelSpec, construction: str) -> list[str]:
    predict = SLOT_PREDICT_GS if spec.gauss_seidel else SLOT_PREDICT_EXPLICIT
    who = ("summed-variable updaters W_*_summed_variable_{pred,yhat}_post"
           if construction == "synapses" else "network_operation coupling_predict")
    fb = ("summed-variable updaters W_*_summed_variable_fb_pre"
          if construction == "synapses" else "network_operation coupling_feedback")
    rows = [(predict, f"predictions pred, yhat from the {'new' if spec.gauss_seidel else 'old'} "
                      f"activity ({who})"),
            (SLOT_FEEDBACK, f"credit fed back fb = J^T g, reads those predictions ({fb})"),
            (SLOT_OBSERVE, "StateMonitors and per-layer summaries (the state of this step)"),
            (("groups", 0), "state updaters of layer_* "
                            + ("(h only: Euler)" if spec.gauss_seidel else f"({spec.method})")),
            (SLOT_BOUNDS, "layer_*_bounds: divergence flag"),
            (SLOT_RATES_GS if spec.gauss_seidel else SLOT_RATES_EXPLICIT,
             f"layer_*_rates: phi, phi' of the {'new' if spec.gauss_seidel else 'old'} activity")]
    if spec.gauss_seidel and any(op.name == "dual" for op in spec.operations):
        rows.append((SLOT_DUAL, "layer_*_dual: decay of the decoded error" if spec.spiking else
                     "layer_*_dual: error and multiplier neurons, new residual"))
    if spec.spiking:
        rows.append((SLOT_SPIKES_GS if spec.gauss_seidel else SLOT_SPIKES_EXPLICIT,
                     "layer_*_err_pos/neg: Poisson spikes from the "
                     f"{'new' if spec.gauss_seidel else 'old'} residual (thresholders)"))
        rows.append((("synapses", 0), "layer_*_err_*_syn: each spike moves err by +-spike_jump"))
        if any(op.name == "multiplier" for op in spec.operations):
            rows.append((SLOT_MULTIPLIER, "layer_*_multiplier: lam integrates the decoded error"))
    order = ["before_groups", "groups", "after_groups", "thresholds", "synapses",
             "after_synapses", "end"]
    rows.sort(key=lambda r: (order.index(r[0][0]), r[0][1]))
    return [f"  {i}. ({when}, order {o}) {what}" for i, ((when, o), what) in enumerate(rows, 1)]


def equations_text(cfg: Config) -> str:
    spec = model_spec(cfg)
    b2c = cfg.brian2
    lines = [
        f"# ctpc model {spec.name!r} as Brian2 objects (backend brian2, target {b2c.target}, "
        f"construction {b2c.construction})",
        f"# {cfg.dynamics.method}, {cfg.network.activation}, D = {spec.input_dim} -> "
        f"{spec.n_hidden} hidden layer{'s' if spec.n_hidden > 1 else ''} x N = {spec.width} -> "
        f"O = {spec.output_dim}, "
        f"batch B = {spec.batch}, dt = {cfg.integrator.dt} ms, scheme {cfg.integrator.scheme}",
        "# One neuron per (sample, unit): neuron index = sample * units + unit; samples never "
        "interact.",
    ]
    if spec.gauss_seidel:
        lines.append("# Gauss-Seidel schedule: h takes an Euler step, then the predictions are "
                     "recomputed and the error/multiplier neurons step with the new residual.")
        if spec.inner_steps > 1:
            lines.append(f"# discrete: {spec.inner_steps} Brian2 steps (primal) per ctpc step.")
    else:
        lines.append(f"# Integration: {method_description(spec.method, spec.noisy)}. Summed "
                     "variables are "
                     "updated once per step (inter-layer coupling is first order in dt).")
    lines += ["", "## Constants (namespace of every object)"]
    for name, (value, unit) in spec.constants.items():
        lines.append(f"{name} = {value!r}" + UNIT_TEXT.get(unit, ""))

    for g in spec.groups:
        if g.name.startswith("layer_") and g.name != "layer_1":
            continue
        title, size = g.name, f"{g.size} neurons"
        if g.name == "layer_1" and spec.n_hidden > 1:
            title, size = f"layer_1 ... layer_{spec.n_hidden}", f"{g.size} neurons each"
        method = f", method {spec.method!r}" if g.method else ""
        lines += ["", f"## NeuronGroup {title} ({size}{method}): {g.what}",
                  _indent(g.equations)]
    if b2c.construction == "synapses":
        shown = spec.synapses if len(spec.synapses) <= 3 else \
            [spec.synapses[0], spec.synapses[1], spec.synapses[-1]]
        for s in shown:
            title, what, model = s.name, s.what, s.model
            if s is spec.synapses[1] and len(spec.synapses) > 3:
                last = len(spec.synapses) - 1
                title = f"W_2 ... W_{last}"
                what = what.replace("layer_1 -> layer_2", "layer_(l-1) -> layer_l")
                model = model.replace("W_2[", "W_l[")
            lines += ["", f"## Synapses {title}: {what}",
                      f"#  dense within each sample: connect(i, j) for sample_pre == sample_post, "
                      f"{s.n_pre} x {s.n_post} synapses per sample; w = W[unit_post, unit_pre]",
                      _indent(model)]
    else:
        lines += ["", "## Coupling (network_operation, runtime targets only)",
                  _indent("coupling_predict:  pred_1 = s_in W_1 x;  pred_l = h_(l-1) + s_mid W_l "
                          "phi(h_(l-1));  yhat = s_out W_L phi(h_H)\n"
                          "coupling_feedback: fb_l = g_(l+1) + s_mid phi'(h_l) W_(l+1)^T g_(l+1);"
                          "  fb_H = -s_out phi'(h_H) W_L^T (yhat - y)\n"
                          "(batched matrix products over all layers and samples, written into "
                          "the groups' pred, yhat, fb)")]
    if spec.spiking:
        e = spec.spiking[0], spec.spiking[1]
        title = ("layer_1_err_pos, layer_1_err_neg" if spec.n_hidden == 1 else
                 f"layer_l_err_pos, layer_l_err_neg (l = 1 ... {spec.n_hidden})")
        lines += ["", f"## NeuronGroups {title} ({e[0].size} Poisson neurons each, threshold "
                      f"{e[0].threshold!r}): spiking error neurons of the +r and -r parts",
                  _indent(e[0].equations.replace("layer_1", "layer_l")),
                  _indent("(err_neg: " + e[1].equations.splitlines()[-1] + ")"),
                  "## Synapses layer_l_err_pos_syn, layer_l_err_neg_syn: one-to-one onto "
                  "layer_l (connect(j='i'))",
                  _indent(f"on_pre: {e[0].on_pre}    (err_neg: {e[1].on_pre})")]
    for op in spec.operations:
        lines += ["", f"## run_regularly on every layer: layer_*_{op.name} ({op.slot[0]}, order "
                      f"{op.slot[1]}): {op.what}", _indent(op.code)]
    lines += ["", "## Schedule within one time step"] + _schedule(spec, b2c.construction)
    return "\n".join(lines)
