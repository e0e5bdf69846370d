"""The schema: the one validated description of a run, as typed, checked objects.

Everything a backend needs (network, data, dynamics, integrator, recording) is here, so every
backend and every analysis reads the same model. This module is the bottom layer of the package:
it touches no file and imports nothing of ctpc but the scheme table. Validation happens in two
passes:

1. ``Config.model_validate`` (here) checks types, ranges and which keys exist (pydantic,
   ``extra=forbid``; every float must be finite unless a key documents ``.inf``);
2. :func:`ctpc.build.resolve.resolve` fills what depends on files (input/output sizes of a data set,
   weight shapes) and checks the cross-field constraints that need those sizes.

Both raise :class:`ConfigError`, whose message names the key path and what is accepted.
"""
from __future__ import annotations

import math
import os
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ctpc.common.errors import InputError
from ctpc.common.schemes import SCHEME_NAMES, SCHEMES

Activation = Literal["linear", "tanh", "relu"]
Scheme = Literal[SCHEME_NAMES]
Variable = Literal["h", "lam", "err", "credit"]
ALL_VARIABLES: tuple[str, ...] = ("h", "lam", "err", "credit")
# Integers stored as attributes of the output file (seed, steps) must fit netCDF's int64.
INT64_MAX = 2 ** 63 - 1


class ConfigError(InputError):
    """A configuration that cannot run. The message names the key path and how to fix it."""


class _Strict(BaseModel):
    # extra="forbid": a typo in a key is an error, never silently ignored.
    # allow_inf_nan=False: .inf/.nan are refused unless a field allows them explicitly.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true/false as 1/0: `steps: true` would run one step.
        if isinstance(value, bool) and _numeric_only(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        # Python ints have no size limit; every count and size ctpc takes must fit int64 (the
        # output file's attributes, torch's sizes, float arithmetic of the memory estimate).
        for item in (value if isinstance(value, list) else [value]):
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > INT64_MAX:
                raise ValueError(f"must be less than or equal to 2**63 - 1 = {INT64_MAX} "
                                 "in magnitude")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _utf8_text(cls, value: Any) -> Any:
        # A lone surrogate (an undecodable byte of a command-line argument or file name) cannot
        # be written to the output file (its config attribute is UTF-8): refused here, not at
        # the end of the run.
        if isinstance(value, (str, PurePath)) and _has_surrogates(str(value)):
            raise ValueError("holds text that is not valid UTF-8 (an undecodable byte, e.g. "
                             "from a file name or terminal in another encoding); use UTF-8 text")
        return value


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def expand_user(path: Path | None) -> Path | None:
    """``~`` and ``~user`` expanded, as the shell does (netCDF expands them itself, Python's
    file functions do not: both must see the same path). One that cannot be expanded is
    refused (ValueError), never taken as a folder named ``~``."""
    if path is None or not str(path).startswith("~"):
        return path
    expanded = os.path.expanduser(str(path))
    if expanded.startswith("~"):
        raise ValueError(f"cannot expand {str(path).split('/')[0]!r} in {str(path)!r} (no such "
                         "user, or HOME is not set); write the path out in full")
    return Path(expanded)


# A name becomes file names: runs/NAME.nc, NAME.weights.npz.tmp-PID, Brian2's build folder
# NAME-float64-HASH. File systems allow 255 bytes per name; this leaves room for the suffixes.
NAME_MAX_BYTES = 200


def _numeric_only(annotation: Any) -> bool:
    """A field that takes numbers (int or float, optionally None or a literal) but no bool."""
    args = get_args(annotation) or (annotation,)
    return bool({int, float} & set(args)) and bool not in args


class NetworkConfig(_Strict):
    """The residual MLP (spec section 1): input, width, depth, output, activation, weights."""
    input_dim: int | None = Field(None, ge=1, description="D; null = taken from the data set")
    width: int = Field(32, ge=1, description="N, units per hidden layer")
    depth: int = Field(8, ge=2, description="L, number of weight matrices (L-1 hidden layers)")
    output_dim: int | None = Field(None, ge=1, description="O; null = taken from the data set")
    activation: Activation = Field("tanh", description="the rate function phi of every "
                                                        "hidden layer")
    weights: Path | None = Field(None, description=".npz with w1..wL ([out, in], unscaled); "
                                                   "null = drawn N(0, 1) from seed")
    bias: bool = Field(False, description="a bias b_l in every layer's prediction and in the "
                       "output (the paper has none): zeros at the start, or b1..bL from "
                       "network.weights")

    _expand_weights = field_validator("weights")(lambda cls, v: expand_user(v))


DataSource = Literal["digits", "mnist", "synthetic", "npz", "idx"]
SOURCES_WITH_PATH = ("npz", "idx")


class DataConfig(_Strict):
    """The data set, its splits and normalisation, and the batch (guide: data sets)."""
    source: DataSource = Field("digits", description="where the examples come from (guide: "
                                                     "data sets)")
    path: Path | None = Field(None, description="the .npz file (npz) or the directory of IDX "
                                                "files (idx); only with those sources")
    batch_size: int = Field(64, ge=1, description="B, examples per batch")
    split: Literal["train", "test"] = Field(
        "train", description="simulate: the split its one batch is drawn from")
    shuffle: bool = Field(True, description="simulate: permute the split with seed before "
                                            "taking the batch")
    offset: int = Field(0, ge=0, description="first example of the batch (after shuffling)")
    mean: float | None = Field(None, description="normalisation mean; null = the source's own")
    std: float | None = Field(None, gt=0, description="normalisation std; null = the source's own")
    drop_last: bool = Field(True, description="training: drop the last incomplete batch")
    train_subset: int | None = Field(None, ge=1, description="use the first n training examples")
    test_subset: int | None = Field(None, ge=1, description="use the first n test examples")

    _expand_path = field_validator("path")(lambda cls, v: expand_user(v))

    @model_validator(mode="after")
    def _path_matches_source(self) -> "DataConfig":
        if self.source in SOURCES_WITH_PATH and self.path is None:
            raise ValueError(f"data.path is required for data.source={self.source!r}")
        if self.source not in SOURCES_WITH_PATH and self.path is not None:
            raise ValueError(
                f"data.path is only used with data.source npz or idx, not {self.source!r}; "
                "remove data.path or change data.source")
        return self


class NoiseConfig(_Strict):
    """Independent white noise on each population (an Ito SDE; guide: biology). sigma is in
    the variable's unit per sqrt(ms): over a step dt a neuron receives sigma sqrt(dt) N(0, 1)."""
    model_config = ConfigDict(populate_by_name=True)
    h: float = Field(0.0, ge=0, description="sigma_h, noise on the activity neurons "
                                            "(1/sqrt(ms))")
    e: float = Field(0.0, ge=0, description="sigma_e, noise on the error neurons (1/sqrt(ms)); "
                                            "needs leaky error neurons (dynamics.tau_e > 0)")
    lam: float = Field(0.0, ge=0, alias="lambda",
                       description="sigma_lambda, noise on the multiplier neurons "
                                   "(1/sqrt(ms)); not with method pc (no multipliers)")

    @property
    def active(self) -> bool:
        return self.h > 0 or self.e > 0 or self.lam > 0


class DynamicsConfig(_Strict):
    """The method and its time constants, either as tau_h/tau_lambda or as the paper's
    state_lr/alpha (spec sections 2-4)."""
    method: Literal["bp", "pc", "pcalm"] = Field(
        "pcalm", description="learning rule / inference dynamics; bp: training only (no "
                             "neuron dynamics, the exact gradient by autograd)")
    rho: float = Field(1.0, gt=0, description="penalty rho of the augmented Lagrangian")
    tau_h: float | Literal["auto"] | None = Field(
        None, description="activity time constant (ms); 'auto' = dt * lambda_max (step_rule)")
    tau_lambda: float | None = Field(None, gt=0, allow_inf_nan=True,
                                     description="multiplier time constant (ms); .inf allowed")
    tau_e: float = Field(0.0, ge=0,
                         description="error-neuron time constant (ms); 0 = instantaneous")
    state_lr: float | Literal["auto"] | None = Field(
        None, description="paper's eta_h = dt/tau_h; 'auto' = 1/lambda_max (step_rule)")
    step_rule: Literal["paper", "exact"] = Field(
        "paper", description="how 'auto' finds lambda_max of rho A^T A: 'paper' = the authors' "
                             "estimate (power iteration on the batch, stopped at a relative "
                             "change of 1e-3; ~0.5-4 % below the true value), 'exact' = Lanczos "
                             "to 1e-12 (worst sample)")
    alpha: float | None = Field(None, ge=0, description="paper's alpha = dt/tau_lambda")
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="white noise on the "
                               "neurons (guide: biology); all 0 = deterministic")
    delay: float = Field(0.0, ge=0, description="conduction delay (ms) between adjacent layers, "
                         "for predictions going up and credit going down; a multiple of "
                         "integrator.dt (guide: biology)")

    @model_validator(mode="after")
    def _noise_needs_its_neurons(self) -> "DynamicsConfig":
        if self.noise.e > 0 and not self.tau_e > 0:
            raise ValueError("dynamics.noise.e needs leaky error neurons: instantaneous ones "
                             "(tau_e = 0) would carry white noise of infinite variance; set "
                             "dynamics.tau_e > 0 or noise.e: 0")
        if self.noise.lam > 0 and self.method == "pc":
            raise ValueError("dynamics.noise.lambda applies to PC-ALM's multiplier neurons; "
                             "method 'pc' has none. Remove it or set method: pcalm")
        if (self.noise.active or self.delay > 0) and self.method == "bp":
            raise ValueError("dynamics.noise and dynamics.delay act on the neuron dynamics; "
                             "method 'bp' has none")
        return self

    @model_validator(mode="after")
    def _one_parameterisation(self) -> "DynamicsConfig":
        physical = [k for k in ("tau_h", "tau_lambda") if getattr(self, k) is not None]
        paper = [k for k in ("state_lr", "alpha") if getattr(self, k) is not None]
        if physical and paper:
            raise ValueError(
                f"dynamics: give either tau_h/tau_lambda (time constants) or state_lr/alpha "
                f"(the paper's step sizes), not both (got {physical + paper})")
        for key in ("state_lr", "tau_h"):
            value = getattr(self, key)
            if isinstance(value, float) and not value > 0:
                raise ValueError(f"dynamics.{key} must be > 0 or 'auto' (got {value})")
        if self.tau_lambda is not None and math.isnan(self.tau_lambda):
            raise ValueError("dynamics.tau_lambda must be a positive number or .inf (got nan)")
        return self

    @property
    def uses_paper_parameters(self) -> bool:
        return self.state_lr is not None or self.alpha is not None

    @property
    def needs_auto_step(self) -> bool:
        return "auto" in (self.state_lr, self.tau_h)


class IntegratorConfig(_Strict):
    """The time-stepping scheme, the step, the run length and the divergence checks."""
    scheme: Scheme = Field("semi_implicit", description="time-stepping scheme (reference: "
                                                        "schemes)")
    dt: float = Field(1.0, gt=0, description="time step (ms)")
    steps: int | None = Field(None, ge=1, le=INT64_MAX,
                              description="run length in steps (or give t_end)")
    t_end: float | None = Field(None, gt=0, description="ms; alternative to steps")
    budget: Annotated[int, Field(ge=1, le=INT64_MAX)] | Literal["auto"] | None = Field(
        None, description="discrete only: inference budget T; 'auto' = 2L")
    inner_steps: int = Field(1, ge=1, description="discrete only: primal steps per dual step")
    weight_credit_timing: Literal["pre_dual", "post_dual"] = Field(
        "pre_dual", description="discrete only: read the weight gradient before or after the "
                                "last dual step")
    check_every: int = Field(64, ge=1, description="steps between divergence checks (syncs)")
    compile: bool | Literal["unrolled", "loop"] = Field(False, description=(
        "training on the CPU runs each presentation as torch.compile'd code (a one-off compile "
        "per shape, see docs/benchmarks.md). true or 'unrolled': one program with its steps "
        "unrolled (over 64 steps, programs of 16 steps), the fastest per update, ~1-2 min "
        "to compile on a cold cache; 'loop': one program whose steps are a loop, compiled in "
        "5-22 s whatever the length and depth, 5-25 % slower per update; simulate runs eagerly"))
    divergence_bound: float = Field(1e6, gt=0, description="|state| above this = diverged")
    growth_bound: float = Field(
        1e3, gt=1, allow_inf_nan=True,
        description="|state| above this times max(1, |initial state|) = diverged (an "
                    "instability caught before it reaches divergence_bound); .inf: off")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_value(cls, value: Any) -> Any:
        # one message instead of pydantic's one per member of the union (and no 0/1 as bools)
        if isinstance(value, bool) or value in ("unrolled", "loop"):
            return value
        raise ValueError("must be false, true (= 'unrolled') or 'loop'")

    @property
    def compile_mode(self) -> str | None:
        """None (eager), 'unrolled' (``compile: true`` too) or 'loop'."""
        return {False: None, True: "unrolled"}.get(self.compile, self.compile)

    @model_validator(mode="after")
    def _length(self) -> "IntegratorConfig":
        given = [k for k in ("steps", "t_end", "budget") if getattr(self, k) is not None]
        if self.steps is not None and self.t_end is not None:
            raise ValueError("integrator: give steps or t_end, not both")
        if not given:
            raise ValueError("integrator: give the run length as integrator.steps (or t_end; "
                             "for scheme discrete, integrator.budget)")
        # Non-default values only: a stored (fully dumped) config must re-validate.
        discrete_only = [k for k in ("budget", "inner_steps", "weight_credit_timing")
                         if getattr(self, k) != type(self).model_fields[k].default]
        if self.scheme != "discrete" and discrete_only:
            raise ValueError(f"integrator.{discrete_only[0]} applies only to scheme 'discrete' "
                             f"(scheme is {self.scheme!r}); remove it or set scheme: discrete")
        if self.t_end is not None:
            if not self.t_end / self.dt <= INT64_MAX:      # also catches inf
                raise ValueError(f"integrator.t_end / integrator.dt ({self.t_end:g} / "
                                 f"{self.dt:g}) is too many steps to count; raise dt or "
                                 "lower t_end")
            n = round(self.t_end / self.dt)
            if n < 1 or not math.isclose(n * self.dt, self.t_end, rel_tol=1e-9):
                raise ValueError(f"integrator.t_end ({self.t_end}) must be a positive multiple "
                                 f"of integrator.dt ({self.dt})")
        if self.budget == "auto" and self.n_steps_from_length() is not None:
            raise ValueError("integrator.budget 'auto' (2 x network.depth) and steps/t_end both "
                             "give the run length; give one of them")
        if self.budget not in (None, "auto") and \
                self.n_steps_from_length() not in (None, self.budget):
            raise ValueError(f"integrator.budget ({self.budget}) and steps/t_end "
                             f"({self.n_steps_from_length()}) disagree; give one of them")
        return self

    def n_steps_from_length(self) -> int | None:
        if self.steps is not None:
            return self.steps
        if self.t_end is not None:
            return round(self.t_end / self.dt)
        return None

    @property
    def n_steps(self) -> int:
        """Number of integration steps (for discrete: the budget T)."""
        n = self.n_steps_from_length()
        if n is None and self.budget == "auto":
            raise ConfigError("integrator.budget: 'auto' must be resolved first "
                              "(ctpc.load_config does it: 2 x network.depth)")
        return self.budget if n is None else n


class RecordConfig(_Strict):
    """What a run records: traces of the neuron variables, and the limits on their size."""
    every: int = Field(1, ge=1, description="record every this many steps (final step always)")
    variables: list[Variable] = Field(default_factory=lambda: list(ALL_VARIABLES),
                                      description="variables traced as [time, layer, sample, "
                                                  "unit]")
    layers: Literal["all"] | list[int] = Field("all", description="hidden layers (1 .. L-1) to "
                                                                  "trace; the others are NaN")
    # The first sample by default: every neuron of one sample, at every step, is what one
    # watches; all B samples cost B times the memory and time (set samples: all for them).
    samples: Literal["all"] | list[int] = Field(default_factory=lambda: [0],
                                                description="batch indices to trace (all: B "
                                                            "times the memory and time)")
    units: Literal["all"] | list[int] = Field("all", description="unit indices to trace")
    max_mb: float = Field(2048.0, gt=0, description="refuse runs whose traces or per-layer "
                                                    "series would exceed this many MB")
    stream_mb: float = Field(256.0, gt=0, description=(
        "a torch run whose records (traces and series) exceed this streams them to its output "
        "file chunk by chunk instead of holding them in memory"))


class TrainingConfig(_Strict):
    """How ``ctpc.train`` learns (spec section 7); ignored by ``ctpc.simulate``."""
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="torch.optim.Adam (betas 0.9, 0.999, eps 1e-8) or SGD with momentum")
    lr: float | Literal["auto"] = Field("auto", description="'auto' = 1e-3 sqrt(N / L)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    epochs: int = Field(1, ge=1, description="passes over the training split")
    max_updates: int | None = Field(None, ge=1, description="stop after this many updates")
    eval_every: int | None = Field(
        None, ge=1, description="updates between evaluations (always: each epoch's end and "
                                "the last update)")
    checkpoint_every: int | None = Field(
        200, ge=1, description="updates between checkpoints (always: the last update); null = "
                               "the last update only")
    plasticity: Literal["optimizer", "continuous"] = Field(
        "optimizer", description="optimizer: one optimiser step per batch from the read-out; "
                                 "continuous: tau_w dW/dt = -dL/dW during each presentation")
    tau_w: float | None = Field(None, gt=0, description="ms; plasticity: continuous only")
    probe_size: int | None = Field(
        None, ge=1, description="examples of the fixed probe batch for the BP alignment "
                                "(default: data.batch_size)")
    eval_batch_size: int = Field(4096, ge=1, description="examples per forward pass when "
                                                         "evaluating a whole split")
    cuda_graph: bool = Field(False, description="capture the whole update (inference, read-out, "
                                                "optimiser) as one CUDA graph (CUDA only)")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingConfig":
        if isinstance(self.lr, float) and not self.lr > 0:
            raise ValueError(f"training.lr must be > 0 or 'auto' (got {self.lr})")
        if self.plasticity == "continuous" and self.tau_w is None:
            raise ValueError("training.plasticity 'continuous' needs training.tau_w (ms), the "
                             "time constant of tau_w dW/dt = -dL/dW")
        if self.plasticity != "continuous" and self.tau_w is not None:
            raise ValueError("training.tau_w applies to plasticity 'continuous' only; remove it "
                             "or set training.plasticity: continuous")
        if self.optimizer != "sgd" and self.momentum != type(self).model_fields["momentum"].default:
            raise ValueError("training.momentum applies to optimizer 'sgd' only")
        return self


Brian2Target = Literal["numpy", "cython", "cpp_standalone"]
Brian2Method = Literal["euler", "rk2", "heun", "rk4"]


class Brian2Config(_Strict):
    """Options of ``backend: brian2`` (ignored by the torch backend)."""
    target: Brian2Target = Field(
        "numpy", description="Brian2 code generation: numpy (no compiler), cython, cpp_standalone")
    construction: Literal["synapses", "network_operation"] = Field(
        "synapses", description="inter-layer coupling: dense Synapses with summed variables, or "
                                "one network_operation doing the matrix products (runtime only)")
    method: Brian2Method | None = Field(
        None, description="Brian2 state-update method; null = from integrator.scheme")
    build_dir: Path | None = Field(
        None, description="cython cache and cpp_standalone projects; null = "
                          "$XDG_CACHE_HOME/ctpc/brian2 (~/.cache/ctpc/brian2)")
    errors: Literal["rate", "spiking"] = Field(
        "rate", description="error neurons as rates (the ODE model) or as pairs of spiking "
                            "neurons for the positive and negative part of e (guide: biology)")
    r_max: float = Field(1000.0, gt=0, description="errors: spiking only: the largest firing "
                                                   "rate (Hz) of an error neuron, reached at "
                                                   "|r| >= e_max; a neuron fires at most once "
                                                   "per step, so r_max * integrator.dt <= 1")
    e_max: float = Field(1.0, gt=0, description="errors: spiking only: the residual at which "
                                                "an error neuron fires at r_max (rate r_max "
                                                "min(1, [+-r]_+ / e_max)); each spike moves the "
                                                "decoded error by e_max / (r_max tau_e)")


class Config(_Strict):
    """A whole run: the top-level keys and one section per part of the model."""
    name: str = Field("", description="label stored in the output and the default file "
                                      "name; loading a YAML file fills in its stem")
    description: str = Field("", description="free text stored in the output")
    seed: int = Field(0, ge=0, le=INT64_MAX, description="weights, data order, synthetic data")
    dtype: Literal["float32", "float64"] = Field(
        "float32", description="floating-point type (float64 for exactness studies)")
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="auto: CUDA when "
                                                                       "available")
    cuda_tf32: bool = Field(False, description="float32 matrix products in TF32 on CUDA "
                                               "(faster, less exact: an explicit choice)")
    backend: Literal["torch", "brian2"] = Field("torch", description="the simulator that "
                                                                     "runs the model")
    output: Path | None = Field(None, description="netCDF path; null = runs/<name>.nc")
    memory_limit_gb: float | None = Field(
        None, gt=0, description="refuse runs whose estimated memory exceeds this many GiB; "
                                "null = half of the machine's physical memory")
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    # No default: a config without a run length is an error, an empty one included.
    integrator: IntegratorConfig
    record: RecordConfig = Field(default_factory=RecordConfig)
    brian2: Brian2Config = Field(default_factory=Brian2Config, description="Brian2 backend options")
    training: TrainingConfig | None = Field(
        None, description="training options (ctpc.train); a config with this section is a "
                          "training run for ctpc.sweep")
    sweep: dict[str, list[Any]] | None = Field(None, description="sweep axes (ctpc.sweep only)")

    @field_validator("name")
    @classmethod
    def _name_is_one_file_name(cls, name: str) -> str:
        # The name becomes file names (the default output runs/NAME.nc, Brian2's build folder):
        # one plain name of a sane length, or a run writes outside runs/ or fails at its end.
        why = ("the name becomes file names (the default output runs/NAME.nc); it defaults to "
               "the config file's name")
        if "\0" in name:
            raise ValueError(f"the name holds a NUL byte, which no file name can hold ({why}); "
                             "remove it")
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a plain file name (no '/' or '\\', not '.' or "
                             f"'..': {why}); use e.g. {_plain_name(name)!r}, and give the "
                             "output path with output: or --out")
        if len(name.encode("utf-8")) > NAME_MAX_BYTES:
            raise ValueError(f"the name is {len(name.encode('utf-8'))} bytes long (UTF-8); "
                             f"{why}, and file systems allow 255 bytes per name: use at most "
                             f"{NAME_MAX_BYTES}")
        return name

    @field_validator("output", mode="before")
    @classmethod
    def _output_names_a_file(cls, value: Any) -> Any:
        # A Path drops a trailing '/': read the text as given.
        if isinstance(value, str):
            if value.strip() == "":
                raise ValueError("empty path; give a file name such as runs/run.nc, or null "
                                 "for the default runs/<name>.nc")
            if "\0" in value:
                raise ValueError("the path holds a NUL byte, which no file name can hold; "
                                 "remove it")
            last = value.rstrip("/").rpartition("/")[2]
            if value.endswith("/") or last in (".", ".."):
                raise ValueError(f"{value!r} names a directory; give a file path inside it, "
                                 f"e.g. {os.path.join(value, 'run.nc')!r}")
        return value

    _expand_output = field_validator("output")(lambda cls, v: expand_user(v))

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if self.integrator.scheme == "discrete" and self.dynamics.tau_e > 0:
            raise ValueError("integrator.scheme 'discrete' is the paper's algorithm, whose error "
                             "neurons are instantaneous: set dynamics.tau_e: 0 or pick a "
                             "continuous scheme (euler, semi_implicit, heun, rk4)")
        if self.backend == "brian2":
            _check_brian2(self)
        elif self.brian2.errors != "rate":
            raise ValueError("brian2.errors 'spiking' is a Brian2 model: set backend: brian2, "
                             "or errors: rate")
        _check_biology(self)
        if self.training is not None and self.training.plasticity == "continuous" and \
                self.dynamics.method == "bp":
            raise ValueError("training.plasticity 'continuous' integrates the neurons' local "
                             "weight dynamics; dynamics.method 'bp' has none. Use pc or pcalm, "
                             "or plasticity: optimizer")
        return self

    # ----------------------------------------------------------------- derived quantities
    @property
    def n_hidden(self) -> int:
        return self.network.depth - 1

    def rates(self) -> tuple[float, float]:
        """(tau_h, tau_lambda) in ms, whichever parameterisation was given.

        PC has no multipliers, so tau_lambda = inf (alpha = 0): PC is PC-ALM with lambda = 0.
        """
        d, dt = self.dynamics, self.integrator.dt
        if d.needs_auto_step:
            raise ConfigError("dynamics.state_lr / tau_h: 'auto' must be resolved first "
                              "(ctpc.load_config / ctpc.config.schema.resolve does it)")
        if d.uses_paper_parameters:
            eta = 0.25 if d.state_lr is None else float(d.state_lr)
            alpha = 1.0 if d.alpha is None else d.alpha
            tau_h = dt / eta
            tau_l = math.inf if alpha == 0 else dt / alpha
        else:
            tau_h = 4.0 if d.tau_h is None else d.tau_h
            tau_l = 1.0 if d.tau_lambda is None else d.tau_lambda
        if d.method == "pc":
            tau_l = math.inf
        return tau_h, tau_l

    def to_dict(self) -> dict:
        """Plain dict (paths as strings, inf kept as float) that validates back to this Config."""
        return _plain(self.model_dump(mode="python", by_alias=True))

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_YAML_DUMPER, sort_keys=False)


def _plain_name(name: str) -> str:
    plain = name.replace("/", "_").replace("\\", "_").strip("._")
    return plain or "run"


def _check_biology(cfg: "Config") -> None:
    """Noise and delays: the schemes and settings that implement them (guide: biology)."""
    dyn, it = cfg.dynamics, cfg.integrator
    if dyn.noise.active and it.scheme in ("rk4", "discrete"):
        raise ValueError(
            f"dynamics.noise: scheme {it.scheme!r} has no stochastic form ("
            + ("rk4's order does not carry over to an SDE" if it.scheme == "rk4" else
               "the paper's algorithm is deterministic") +
            "); use euler or semi_implicit (Euler-Maruyama) or heun (stochastic Heun)")
    if dyn.noise.active and cfg.training is not None:
        if cfg.training.plasticity == "continuous":
            raise ValueError("dynamics.noise with training.plasticity 'continuous' is not built "
                             "(the joint neuron-weight solver has no stochastic form); use "
                             "plasticity: optimizer (noisy inference, one weight update per "
                             "batch) or noise: {}")
        if cfg.training.cuda_graph:
            raise ValueError("dynamics.noise with training.cuda_graph: true: a CUDA graph "
                             "replays the noise of its capture in every update; set "
                             "cuda_graph: false")
    if dyn.delay > 0:
        k = dyn.delay / it.dt
        if not math.isclose(k, round(k), rel_tol=1e-9, abs_tol=1e-9) or round(k) < 1:
            near = max(1, round(k)) * it.dt
            raise ValueError(f"dynamics.delay ({dyn.delay:g} ms) must be a whole number of "
                             f"steps of integrator.dt ({it.dt:g} ms); the nearest valid delay "
                             f"is {near:g} ms")
        if dyn.noise.active:
            raise ValueError("dynamics.noise and dynamics.delay together are not built yet; "
                             "study one at a time")
        if cfg.training is not None:
            raise ValueError("dynamics.delay: training with conduction delays is not built; "
                             "simulate delayed networks with python -m ctpc.simulate")


def delay_steps(cfg: "Config") -> int:
    """dynamics.delay in steps of integrator.dt (0: no delay)."""
    return round(cfg.dynamics.delay / cfg.integrator.dt) if cfg.dynamics.delay > 0 else 0


def _check_brian2(cfg: "Config") -> None:
    b2, scheme = cfg.brian2, cfg.integrator.scheme
    if cfg.device == "cuda":
        raise ValueError("device: 'cuda' is not available with backend: brian2 (Brian2 runs on "
                         "the CPU); set device: cpu or auto, or use backend: torch")
    if b2.method is not None and SCHEMES[scheme].gauss_seidel:
        explicit = sorted(n for n, s in SCHEMES.items() if not s.gauss_seidel)
        raise ValueError(
            f"brian2.method ({b2.method!r}) applies to the explicit schemes only; scheme "
            f"{scheme!r} is a fixed Gauss-Seidel schedule of Euler updates. Remove brian2.method "
            f"or set integrator.scheme to one of {explicit}")
    if cfg.dynamics.delay > 0:
        raise ValueError(
            "dynamics.delay: the Brian2 backend couples layers through summed variables, which "
            "Brian2 evaluates from the current state of the step and cannot delay (its synaptic "
            "delays apply to spike events only); simulate delays with backend: torch")
    if b2.construction == "network_operation" and b2.target == "cpp_standalone":
        raise ValueError(
            "brian2.construction 'network_operation' runs Python code during the run, which "
            "brian2.target 'cpp_standalone' cannot do; use construction: synapses with "
            "cpp_standalone, or target: numpy / cython with network_operation")
    if cfg.dynamics.noise.active and b2.method in ("rk2", "rk4"):
        raise ValueError(
            f"dynamics.noise: brian2.method {b2.method!r} has no stochastic form in Brian2; "
            "use brian2.method euler or heun (or leave it null)")
    if b2.errors == "spiking":
        _check_spiking(cfg)


def _check_spiking(cfg: "Config") -> None:
    """brian2.errors: spiking (guide: Brian2 backend, spiking error neurons)."""
    b2, it = cfg.brian2, cfg.integrator
    if not cfg.dynamics.tau_e > 0:
        raise ValueError(
            "brian2.errors 'spiking' decodes the error neurons' spikes with the synaptic time "
            "constant dynamics.tau_e (the decoded error decays as tau_e de/dt = -e): set "
            "dynamics.tau_e > 0 (e.g. 1.0 ms)")
    if it.scheme not in ("euler", "semi_implicit") or b2.method not in (None, "euler"):
        raise ValueError(
            f"brian2.errors 'spiking' runs with integrator.scheme euler or semi_implicit (Euler "
            f"steps, spikes drawn once per step), not scheme {it.scheme!r}"
            + (f" with brian2.method {b2.method!r}" if b2.method not in (None, "euler") else "")
            + "; set integrator.scheme: euler or semi_implicit")
    if b2.construction != "synapses" or b2.target == "cpp_standalone":
        # built and tested with Synapses on the runtime targets; the other combinations are not
        # tested, so they are refused rather than run unchecked
        raise ValueError(
            "brian2.errors 'spiking' is built for brian2.construction: synapses on the runtime "
            "targets (numpy, cython); set construction: synapses and target: numpy or cython")
    if b2.r_max * 1e-3 * it.dt > 1 + 1e-12:
        raise ValueError(
            f"brian2.r_max ({b2.r_max:g} Hz) x integrator.dt ({it.dt:g} ms) = "
            f"{b2.r_max * 1e-3 * it.dt:g} spikes per step: a Brian2 neuron fires at most once "
            f"per step, so r_max * dt must be <= 1; use dt <= {1e3 / b2.r_max:g} ms or a lower "
            "r_max")


# libyaml's emitter when PyYAML was built with it (4x faster than the pure-Python one: the
# resolved config is stored in every output file)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _plain(obj: Any) -> Any:
    # pydantic's json mode would turn inf into null; keep floats, stringify paths only.
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def layer_shapes(cfg: Config) -> list[tuple[int, int]]:
    """[out, in] shape of w1 ... wL (input/output sizes must be resolved)."""
    n, net = cfg.network.width, cfg.network
    return [(n, net.input_dim)] + [(n, n)] * (net.depth - 2) + [(net.output_dim, n)]
