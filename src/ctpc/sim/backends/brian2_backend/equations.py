"""The PC / PC-ALM network as Brian2 equations, derived from the one validated Config.

This module only writes text: the equations, synapse models, operations and the schedule that
:mod:`.network` turns into Brian2 objects and that :func:`equations_text` prints. Building and
printing read the same :class:`ModelSpec`, so what a user reads is what runs.

Layout: one neuron per (sample, unit). Group ``layer_l`` (l = 1 .. L-1) holds B x N neurons,
neuron ``sample * N + unit``; ``input`` (B x D) and ``output`` (B x O) are clamped. Each weight
matrix is a dense ``Synapses`` object connecting the two groups *within each sample*, with the
weights replicated over the batch (Brian2 synapses cannot share a weight).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from ctpc.config.schema import Config
from ctpc.core.network import layer_scales
from ctpc.common.schemes import SCHEMES

# Convergence order of each Brian2 state-update method as Brian2 integrates a single equation
# (``rk2`` is Brian2's midpoint method, not a ctpc scheme). The inter-layer coupling is first
# order whatever the method: see docs/guide/brian2.md.
BRIAN2_METHOD_ORDER = {"euler": 1, "rk2": 2, "heun": 2, "rk4": 4}

# The schedule inside one Brian2 time step (Brian2 slot, order). Brian2's own default puts every
# summed-variable updater at ('groups', -1) and breaks ties by name, so W_l's feedback (name
# '..._fb_pre') would run before its prediction ('..._pred_post') and read a stale prediction.
# Every updater gets an explicit slot instead.
SLOT_RATES_EXPLICIT = ("before_groups", 0)     # explicit schemes: phi(h), phi'(h) of the old state
SLOT_PREDICT_EXPLICIT = ("before_groups", 1)   # explicit schemes: predictions from the old state
SLOT_FEEDBACK = ("before_groups", 2)           # credit fed back: reads the predictions
SLOT_OBSERVE = ("before_groups", 3)            # monitors / summaries: the state of this step
SLOT_RATES_GS = ("after_groups", 0)            # Gauss-Seidel: phi, phi' of the new activity
SLOT_PREDICT_GS = ("after_groups", 1)          # Gauss-Seidel: predictions from the new activity
SLOT_DUAL = ("after_groups", 2)                # Gauss-Seidel: error and multiplier neurons
SLOT_BOUNDS = ("end", 0)                       # divergence flag on the new state
SLOT_STOP = ("end", 1)                         # runtime only: stop early once diverged

ACTIVATIONS = {
    # name: (phi, phi'); phi' is written in terms of phi where that is how torch computes it
    "linear": ("h", "1"),
    "tanh": ("tanh(h)", "1 - phi*phi"),
    "relu": ("clip(h, 0, inf)", "int(h > 0)"),
}
# phi and phi' are stored per neuron and set once per step (operation "rates"), not written as
# subexpressions: a subexpression of the presynaptic group is evaluated once per *synapse*, i.e.
# B N^2 tanh calls per layer and step instead of B N. Only the summed variables read them, and
# those are once per step anyway, so this is exact for every method.


@dataclass
class GroupSpec:
    name: str
    size: int
    equations: str
    method: str | None
    what: str


@dataclass
class SynapsesSpec:
    name: str
    source: str
    target: str
    model: str
    weight: int                      # 0-based index into init_weights(cfg)
    n_pre: int                       # units per sample
    n_post: int
    skip: bool                       # carries the identity (residual) connection
    predict_var: str                 # summed variable carrying the prediction
    feedback_var: str | None         # summed variable carrying the credit fed back
    what: str


@dataclass
class OperationSpec:
    """Abstract code run on every hidden layer (Brian2 ``run_regularly``)."""
    name: str
    code: str
    slot: tuple[str, int]
    what: str


@dataclass
class ModelSpec:
    name: str
    method: str | None               # Brian2 method of the layer groups (GS: 'euler' on h only)
    gauss_seidel: bool
    inner_steps: int                 # Brian2 steps per ctpc step (discrete; else 1)
    n_hidden: int
    width: int
    batch: int
    input_dim: int
    output_dim: int
    leaky: bool
    has_lambda: bool
    constants: dict[str, tuple[float, str]]   # name -> (value, 'ms' or '1')
    groups: list[GroupSpec]
    synapses: list[SynapsesSpec]
    operations: list[OperationSpec]
    layer_equations: str = ""

    @property
    def layer_names(self) -> list[str]:
        return [f"layer_{l}" for l in range(1, self.n_hidden + 1)]

    def structure_hash(self) -> str:
        """Changes whenever generated code would (cache key of a standalone project)."""
        text = repr((self.method, self.gauss_seidel, self.inner_steps, self.n_hidden, self.width,
                     self.batch, self.input_dim, self.output_dim, self.leaky, self.has_lambda,
                     [g.equations for g in self.groups], [s.model for s in self.synapses],
                     [o.code for o in self.operations]))
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def brian2_method(cfg: Config) -> str:
    """The Brian2 method of the layer groups. Gauss-Seidel schemes are not a Brian2
    state-update method but a schedule (activity first, then the error and multiplier neurons
    from the new residual) built from Euler updates of h."""
    info = SCHEMES[cfg.integrator.scheme]
    if info.gauss_seidel:
        return "euler"
    return cfg.brian2.method or info.brian2_method


def rates_code(activation: str) -> str:
    phi, dphi = ACTIVATIONS[activation]
    return f"phi = {phi}\ndphi = {dphi}"


def _layer_equations(leaky: bool, has_lambda: bool, gauss_seidel: bool, activation: str,
                     bias: bool = False) -> str:
    phi, dphi = ACTIVATIONS[activation]
    pred = "(pred + b)" if bias else "pred"      # the full prediction of the unit
    lines = ["dh/dt = (fb - credit) / tau_h : 1    # activity neurons: tau_h dh/dt = -dL/dh"]
    if has_lambda:
        lines.append("lam : 1    # multiplier neurons, updated after h (Gauss-Seidel)"
                     if gauss_seidel else
                     "dlam/dt = err / tau_lambda : 1    # multiplier neurons integrate the error")
    else:
        lines.append("lam : 1 (constant)    # PC: no multiplier neurons, lam = 0")
    if leaky:
        lines.append("err : 1    # leaky error neurons, updated after h (Gauss-Seidel)"
                     if gauss_seidel else
                     f"derr/dt = (h - {pred} - err) / tau_e : 1    # leaky error neurons")
    else:
        lines.append(f"err = h - {pred} : 1    # instantaneous error neurons: the residual r")
    lines += [
        "credit = rho * err + lam : 1    # composite credit g, sent down and to the weights",
        f"phi : 1    # rate sent up, {phi} (set once per step by layer_l_rates)",
        f"dphi : 1    # slope phi'(h) = {dphi}, gates the credit sent down (layer_l_rates)",
        "pred : 1    # prediction from the layer below (summed variable)",
        *(["b : 1 (constant)    # bias b_l of the unit's prediction (network.bias)"] if bias
          else []),
        "fb : 1    # credit fed back from above, J^T g (summed variable)",
        "diverged_step : integer    # first step whose state left the bound (-1: none)",
        "sample : integer (constant)",
        "unit : integer (constant)",
    ]
    return "\n".join(lines)


def _dual_code(cfg: Config, leaky: bool, has_lambda: bool, n_primal: int,
               bias: bool = False) -> str | None:
    """Gauss-Seidel: error and multiplier neurons from the residual of the new activity."""
    it = cfg.integrator
    gate = []
    if it.scheme == "discrete":
        if it.inner_steps > 1:   # one dual step per inner_steps primal steps
            gate.append("int((timestep(t, dt) + 1) % inner_steps == 0)")
        if it.weight_credit_timing == "pre_dual":   # no dual step after the final primal step
            gate.append("int(timestep(t, dt) + 1 < n_primal)")
    factor = " * ".join(gate + ["dt"])
    lines = []
    if leaky:
        pred = "(pred + b)" if bias else "pred"
        lines.append(f"err += {factor} / tau_e * (h - {pred} - err)")
    if has_lambda:
        lines.append(f"lam += {factor} / tau_lambda * err")
    return "\n".join(lines) or None


def _bounds_code(leaky: bool, inner_steps: int) -> str:
    checked = ["abs(h) <= bound", "abs(lam) <= bound"] + (["abs(err) <= bound"] if leaky else [])
    gate = "" if inner_steps == 1 else "int((timestep(t, dt) + 1) % inner_steps == 0) * "
    # NaN compares false, so "not (|x| <= bound)" also catches non-finite values.
    return (f"diverged_step += {gate}int(diverged_step < 0) * int(not ({' and '.join(checked)})) "
            "* (timestep(t, dt) + 1 - diverged_step)")


def model_spec(cfg: Config) -> ModelSpec:
    net, it, dyn = cfg.network, cfg.integrator, cfg.dynamics
    tau_h, tau_l = cfg.rates()
    leaky, has_lambda = dyn.tau_e > 0, not math.isinf(tau_l)
    gauss_seidel = SCHEMES[it.scheme].gauss_seidel
    inner = it.inner_steps if it.scheme == "discrete" else 1
    n_hidden, width, batch = cfg.n_hidden, net.width, cfg.data.batch_size
    d_in, d_out, depth = net.input_dim, net.output_dim, net.depth

    s_in, s_mid, s_out = layer_scales(d_in, width, depth)    # the torch Network's own scales
    constants = {"tau_h": (tau_h, "ms"), "rho": (dyn.rho, "1"), "s_in": (s_in, "1"),
                 "s_mid": (s_mid, "1"), "s_out": (s_out, "1"), "bound": (it.divergence_bound, "1")}
    if has_lambda:
        constants["tau_lambda"] = (tau_l, "ms")
    if leaky:
        constants["tau_e"] = (dyn.tau_e, "ms")
    if inner > 1:
        constants["inner_steps"] = (inner, "1")
    n_primal = it.n_steps * inner
    if it.scheme == "discrete" and it.weight_credit_timing == "pre_dual":
        constants["n_primal"] = (n_primal, "1")

    layer_eqs = _layer_equations(leaky, has_lambda, gauss_seidel, net.activation, net.bias)
    groups = [GroupSpec("input", batch * d_in, "x : 1 (constant)    # clamped input rates\n"
                        "sample : integer (constant)\nunit : integer (constant)", None,
                        f"clamped input, {batch} samples x {d_in} units")]
    groups += [GroupSpec(name, batch * width, layer_eqs, brian2_method(cfg),
                         f"hidden layer, {batch} samples x {width} units")
               for name in [f"layer_{l}" for l in range(1, n_hidden + 1)]]
    groups.append(GroupSpec(
        "output", batch * d_out,
        "y : 1 (constant)    # clamped target\n"
        "yhat : 1    # network output s_out W_L phi(h_H) (summed variable)\n"
        + ("b : 1 (constant)    # output bias b_L (network.bias)\n"
           "out_err = yhat + b - y : 1    # output error, dl/dyhat\n" if net.bias else
           "out_err = yhat - y : 1    # output error, dl/dyhat\n") +
        "sample : integer (constant)\nunit : integer (constant)", None,
        f"clamped target, {batch} samples x {d_out} units"))

    synapses = [SynapsesSpec(
        "W_1", "input", "layer_1",
        "w : 1 (constant)    # W_1[post unit, pre unit], unscaled\n"
        "pred_post = s_in * w * x_pre : 1 (summed)",
        0, d_in, width, False, "pred_post", None, "input -> layer_1: pred_1 = s_in W_1 x")]
    for l in range(2, n_hidden + 1):
        synapses.append(SynapsesSpec(
            f"W_{l}", f"layer_{l - 1}", f"layer_{l}",
            f"w : 1 (constant)    # W_{l}[post unit, pre unit], unscaled\n"
            "skip : 1 (constant)    # 1 on the identity (residual) connection unit k -> unit k\n"
            "pred_post = skip * h_pre + s_mid * w * phi_pre : 1 (summed)\n"
            "fb_pre = credit_post * (skip + s_mid * w * dphi_pre) : 1 (summed)",
            l - 1, width, width, True, "pred_post", "fb_pre",
            f"layer_{l - 1} -> layer_{l}: pred = h + s_mid W phi(h); fb = J^T g"))
    synapses.append(SynapsesSpec(
        f"W_{depth}", f"layer_{n_hidden}", "output",
        f"w : 1 (constant)    # W_{depth}[post unit, pre unit], unscaled\n"
        "yhat_post = s_out * w * phi_pre : 1 (summed)\n"
        "fb_pre = -s_out * w * dphi_pre * out_err_post : 1 (summed)",
        depth - 1, width, d_out, False, "yhat_post", "fb_pre",
        f"layer_{n_hidden} -> output: yhat = s_out W_L phi(h_H); "
        "fb = -s_out phi' W_L^T (yhat - y)"))

    operations = [OperationSpec(
        "rates", rates_code(net.activation), SLOT_RATES_GS if gauss_seidel else SLOT_RATES_EXPLICIT,
        "rate phi(h) and slope phi'(h), once per step, read by the synapses")]
    if gauss_seidel:
        dual = _dual_code(cfg, leaky, has_lambda, n_primal, net.bias)
        if dual:
            operations.append(OperationSpec(
                "dual", dual, SLOT_DUAL,
                "error and multiplier neurons from the residual of the NEW activity"))
    operations.append(OperationSpec(
        "bounds", _bounds_code(leaky, inner), SLOT_BOUNDS,
        "divergence flag: the first step whose state is non-finite or beyond bound"))

    spec = ModelSpec(cfg.name or "ctpc", brian2_method(cfg), gauss_seidel, inner, n_hidden, width,
                     batch, d_in, d_out, leaky, has_lambda, constants, groups, synapses,
                     operations, layer_eqs)
    return spec
