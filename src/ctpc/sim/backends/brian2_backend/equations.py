"""The PC / PC-ALM network as Brian2 equations, derived from the one validated Config.

This module only writes text: the equations, synapse models, operations and the schedule that
:mod:`.network` turns into Brian2 objects and that :func:`equations_text` prints. Building and
printing read the same :class:`ModelSpec`, so what a user reads is what runs.

Layout: one neuron per (sample, unit). Group ``layer_l`` (l = 1 .. L-1) holds B x N neurons,
neuron ``sample * N + unit``; ``input`` (B x D) and ``output`` (B x O) are clamped. Each weight
matrix is a dense ``Synapses`` object connecting the two groups *within each sample*, with the
weights replicated over the batch (Brian2 synapses cannot share a weight).

Noise (``dynamics.noise``, an Ito SDE with additive white noise): each noisy population gets a
term ``sigma_x * xi_x`` in its equation, ``sigma_x`` a namespace constant in 1/sqrt(ms) (Brian2's
``xi`` has dimension s^-1/2, so ``sigma * xi`` is a rate of the dimensionless variable). Brian2
integrates it with Euler-Maruyama (``euler``) or its stochastic Heun (``heun``; for additive
noise that is Euler-Maruyama too: Brian2's heun takes an Euler step for the drift). The
Gauss-Seidel schedule updates ``err`` and ``lam`` in code, so there the noise is an explicit
``sigma * sqrt(dt) * randn()``. A noise-free config generates exactly the equations it did
before noise existed (same text, same structure hash).

Spiking error neurons (``brian2.errors: spiking``): see :func:`_spiking_groups`.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

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
# Spiking error neurons. Explicit schemes: the Poisson neurons draw their spikes from the residual
# of the OLD state, next to the feedback (neither reads what the other writes); the spikes reach
# the decoded error in Brian2's 'synapses' slot, after the state updaters (the Euler decay).
# Gauss-Seidel: they fire in Brian2's 'thresholds' slot, after the new predictions and the
# decay of the decoded error (SLOT_DUAL); the multipliers then integrate the decoded error with
# its new spikes (SLOT_MULTIPLIER, after the synapses).
SLOT_SPIKES_EXPLICIT = ("before_groups", 2)
SLOT_SPIKES_GS = ("thresholds", 0)
SLOT_MULTIPLIER = ("after_synapses", 0)
# Schemes that implement spiking error neurons (brian2.errors: spiking)
SPIKING_SCHEMES = ("euler", "semi_implicit")
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
class SpikingSpec:
    """One sign population of a layer's spiking error neurons: B x N Poisson neurons
    ``layer_l_err_pos`` / ``layer_l_err_neg``, and the one-to-one synapses that decode them into
    the layer's ``err``."""
    name: str                        # layer_l_err_pos | layer_l_err_neg
    layer: str                       # layer_l
    sign: int                        # +1 | -1
    size: int
    equations: str
    threshold: str
    on_pre: str                      # synapse model: what one spike does to err_post
    links: tuple[str, ...]           # linked variables: name in this group = layer variable
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
    noise: dict[str, float] = field(default_factory=dict)      # population -> sigma (1/sqrt(ms))
    spiking: list[SpikingSpec] = field(default_factory=list)   # brian2.errors: spiking

    @property
    def noisy(self) -> bool:
        return any(v > 0 for v in self.noise.values())

    @property
    def layer_names(self) -> list[str]:
        return [f"layer_{l}" for l in range(1, self.n_hidden + 1)]

    def structure_hash(self) -> str:
        """Changes whenever generated code would (cache key of a standalone project)."""
        text = repr((self.method, self.gauss_seidel, self.inner_steps, self.n_hidden, self.width,
                     self.batch, self.input_dim, self.output_dim, self.leaky, self.has_lambda,
                     [g.equations for g in self.groups], [s.model for s in self.synapses],
                     [o.code for o in self.operations])
                    # added with spiking error neurons: only when present, so that every
                    # rate-model project keeps its hash (noise changes the equations anyway)
                    + ((tuple((e.equations, e.threshold, e.on_pre) for e in self.spiking),)
                       if self.spiking else ()))
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


def _noise_term(noise: dict[str, float], pop: str) -> str:
    """`` + sigma_x * xi_x`` for a noisy population in an explicit equation, else ''."""
    return f" + sigma_{pop} * xi_{pop}" if noise.get(pop, 0) > 0 else ""


def _noise_increment(noise: dict[str, float], pop: str) -> str:
    """The Euler-Maruyama increment of a population updated in code (Gauss-Seidel), else ''."""
    return f" + sigma_{pop} * sqrt(dt) * randn()" if noise.get(pop, 0) > 0 else ""


def _layer_equations(leaky: bool, has_lambda: bool, gauss_seidel: bool, activation: str,
                     bias: bool = False, noise: dict[str, float] | None = None,
                     spiking: bool = False) -> str:
    phi, dphi = ACTIVATIONS[activation]
    noise = noise or {}
    pred = "(pred + b)" if bias else "pred"      # the full prediction of the unit
    lines = [f"dh/dt = (fb - credit) / tau_h{_noise_term(noise, 'h')} : 1    # activity neurons: "
             "tau_h dh/dt = -dL/dh" + (" + noise" if noise.get("h", 0) > 0 else "")]
    if has_lambda:
        lines.append("lam : 1    # multiplier neurons, updated after h (Gauss-Seidel)"
                     if gauss_seidel else
                     f"dlam/dt = err / tau_lambda{_noise_term(noise, 'lambda')} : 1    "
                     "# multiplier neurons integrate the error")
    else:
        lines.append("lam : 1 (constant)    # PC: no multiplier neurons, lam = 0")
    if spiking:
        lines.append("err : 1    # decoded error of the spiking error neurons: decays after h, "
                     "jumps on their spikes (Gauss-Seidel)" if gauss_seidel else
                     f"derr/dt = -err / tau_e{_noise_term(noise, 'e')} : 1    # decoded error of "
                     "the spiking error neurons: decays, jumps by +-spike_jump per spike")
    elif leaky:
        lines.append("err : 1    # leaky error neurons, updated after h (Gauss-Seidel)"
                     if gauss_seidel else
                     f"derr/dt = (h - {pred} - err) / tau_e{_noise_term(noise, 'e')} : 1    "
                     "# leaky error neurons")
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
               bias: bool = False, noise: dict[str, float] | None = None,
               spiking: bool = False) -> str | None:
    """Gauss-Seidel: error and multiplier neurons from the residual of the new activity.
    Spiking: only the decay of the decoded error (its spikes come next, in the thresholds and
    synapses slots, and the multipliers after them: :func:`_multiplier_code`)."""
    it = cfg.integrator
    noise = noise or {}
    gate = []
    if it.scheme == "discrete":
        if it.inner_steps > 1:   # one dual step per inner_steps primal steps
            gate.append("int((timestep(t, dt) + 1) % inner_steps == 0)")
        if it.weight_credit_timing == "pre_dual":   # no dual step after the final primal step
            gate.append("int(timestep(t, dt) + 1 < n_primal)")
    factor = " * ".join(gate + ["dt"])
    lines = []
    if spiking:
        return f"err += -{factor} / tau_e * err{_noise_increment(noise, 'e')}"
    if leaky:
        pred = "(pred + b)" if bias else "pred"
        lines.append(f"err += {factor} / tau_e * (h - {pred} - err){_noise_increment(noise, 'e')}")
    if has_lambda:
        lines.append(f"lam += {factor} / tau_lambda * err{_noise_increment(noise, 'lambda')}")
    return "\n".join(lines) or None


def _multiplier_code(noise: dict[str, float]) -> str:
    """Gauss-Seidel with spiking error neurons: the multipliers integrate the decoded error
    after this step's spikes reached it (the rate model's lam update reads the new err too)."""
    return f"lam += dt / tau_lambda * err{_noise_increment(noise, 'lambda')}"


def _spiking_groups(cfg: Config, bias: bool, gauss_seidel: bool) -> list[SpikingSpec]:
    """Spiking error neurons (``brian2.errors: spiking``, Brian2 only).

    Each error neuron of layer l becomes a pair of Poisson neurons, ``layer_l_err_pos`` and
    ``layer_l_err_neg`` (B x N each, neuron ``sample * N + unit`` like the layer), that read
    their unit's residual r = h - pred through linked variables and fire with probability
    nu dt per step, at

        nu_+- = r_max * min(1, [+-r]_+ / e_max)           (r_max in Hz; needs r_max dt <= 1)

    Their spikes reach the unit through one-to-one synapses with time constant tau_e: the
    decoded error e (the layer's ``err``) decays as tau_e de/dt = -e and jumps by
    +-spike_jump = +-e_max / (r_max tau_e) per spike. Hence E[tau_e de/dt] = clip(r, -e_max,
    e_max) - e: for |r| < e_max the mean field is exactly the leaky-error rate model with tau_e
    (per step too: E[e_{n+1}] = e_n + dt/tau_e (r_n - e_n)), and the spiking network converges
    to it as r_max grows at fixed e_max (shot noise of variance e_max |r| / (2 r_max tau_e)).
    The multipliers integrate e and the activity neurons receive g = rho e + lam through the
    existing synapses, as in the rate model.
    """
    n_hidden, batch, width = cfg.n_hidden, cfg.data.batch_size, cfg.network.width
    links = ("h_l = h", "pred_l = pred") + (("b_l = b",) if bias else ())
    resid = "h_l - pred_l - b_l" if bias else "h_l - pred_l"
    out = []
    for l in range(1, n_hidden + 1):
        for sign, tag, expr in ((1, "pos", "r"), (-1, "neg", "-r")):
            eqs = "\n".join([
                f"h_l : 1 (linked)    # activity h of the unit (layer_{l})",
                f"pred_l : 1 (linked)    # its prediction from the layer below (layer_{l})",
                *([f"b_l : 1 (linked)    # its bias (layer_{l})"] if bias else []),
                f"r = {resid} : 1    # the unit's residual",
                f"rate = r_max * clip({expr} / e_max, 0, 1) : Hz    # Poisson rate of the "
                f"{'positive' if sign > 0 else 'negative'} part of r",
            ])
            out.append(SpikingSpec(
                f"layer_{l}_err_{tag}", f"layer_{l}", sign, batch * width, eqs,
                "rand() < rate * dt", f"err_post {'+' if sign > 0 else '-'}= spike_jump",
                links, f"spiking error neurons ({'+' if sign > 0 else '-'}r), {batch} samples "
                       f"x {width} units, one-to-one onto layer_{l}'s err"))
    return out


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
    # populations that evolve get their noise (schema: noise.e needs tau_e > 0, noise.lambda a
    # multiplier); sigma in 1/sqrt(ms)
    sigma = dyn.noise
    noise = {pop: value for pop, value in (("h", sigma.h), ("e", sigma.e), ("lambda", sigma.lam))
             if value > 0}
    for pop, value in noise.items():
        constants[f"sigma_{pop}"] = (value, "1/sqrt(ms)")
    spiking = cfg.brian2.errors == "spiking"
    if spiking:
        b2c = cfg.brian2
        constants["r_max"] = (b2c.r_max, "Hz")
        constants["e_max"] = (b2c.e_max, "1")
        # e_max / (r_max tau_e), r_max in 1/ms: the jump of the decoded error per spike
        constants["spike_jump"] = (b2c.e_max / (b2c.r_max * 1e-3 * dyn.tau_e), "1")

    layer_eqs = _layer_equations(leaky, has_lambda, gauss_seidel, net.activation, net.bias,
                                 noise, spiking)
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
        dual = _dual_code(cfg, leaky, has_lambda, n_primal, net.bias, noise, spiking)
        if dual:
            operations.append(OperationSpec(
                "dual", dual, SLOT_DUAL,
                "decay of the decoded error (its spikes follow: thresholds, synapses)"
                if spiking else
                "error and multiplier neurons from the residual of the NEW activity"))
        if spiking and has_lambda:
            operations.append(OperationSpec(
                "multiplier", _multiplier_code(noise), SLOT_MULTIPLIER,
                "multiplier neurons integrate the decoded error (after this step's spikes)"))
    operations.append(OperationSpec(
        "bounds", _bounds_code(leaky, inner), SLOT_BOUNDS,
        "divergence flag: the first step whose state is non-finite or beyond bound"))

    spec = ModelSpec(cfg.name or "ctpc", brian2_method(cfg), gauss_seidel, inner, n_hidden, width,
                     batch, d_in, d_out, leaky, has_lambda, constants, groups, synapses,
                     operations, layer_eqs, noise,
                     _spiking_groups(cfg, net.bias, gauss_seidel) if spiking else [])
    return spec
