"""The one validated description of a run: YAML -> typed, checked objects.

Everything a backend needs (network, data, dynamics, integrator, recording) is here, so every
backend and every analysis reads the same model. Validation happens in two passes:

1. ``Config.model_validate`` checks types, ranges and which keys exist (pydantic, ``extra=forbid``);
2. ``resolve`` fills what depends on files (input/output sizes of a data set, weight shapes) and
   checks the cross-field constraints that need those sizes.

Both raise :class:`ConfigError`, whose message names the key path and what is accepted.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Activation = Literal["linear", "tanh", "relu"]
Scheme = Literal["euler", "semi_implicit", "heun", "rk4", "discrete"]
Variable = Literal["h", "lam", "err", "credit"]
ALL_VARIABLES: tuple[str, ...] = ("h", "lam", "err", "credit")


class ConfigError(ValueError):
    """A configuration that cannot run. The message names the key path and how to fix it."""


class _Strict(BaseModel):
    # extra="forbid": a typo in a key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NetworkConfig(_Strict):
    input_dim: int | None = Field(None, ge=1, description="D; null = taken from the data set")
    width: int = Field(32, ge=1, description="N, units per hidden layer")
    depth: int = Field(8, ge=2, description="L, number of weight matrices (L-1 hidden layers)")
    output_dim: int | None = Field(None, ge=1, description="O; null = taken from the data set")
    activation: Activation = "tanh"
    weights: Path | None = Field(None, description=".npz with w1..wL ([out, in], unscaled)")


class DataConfig(_Strict):
    source: Literal["digits", "synthetic", "npz", "idx"] = "digits"
    path: Path | None = None
    batch_size: int = Field(64, ge=1)
    split: Literal["train", "test"] = "train"
    shuffle: bool = True
    offset: int = Field(0, ge=0, description="first example of the batch (after shuffling)")
    mean: float | None = Field(None, description="normalisation mean (idx default 0.1307)")
    std: float | None = Field(None, gt=0, description="normalisation std (idx default 0.3081)")

    @model_validator(mode="after")
    def _path_matches_source(self) -> "DataConfig":
        if self.source in ("npz", "idx") and self.path is None:
            raise ValueError(f"data.path is required for data.source={self.source!r}")
        if self.source in ("digits", "synthetic") and self.path is not None:
            raise ValueError(
                f"data.path is only used with data.source npz or idx, not {self.source!r}; "
                "remove data.path or change data.source")
        return self


class DynamicsConfig(_Strict):
    method: Literal["pc", "pcalm"] = "pcalm"
    rho: float = Field(1.0, gt=0)
    tau_h: float | Literal["auto"] | None = Field(
        None, description="activity time constant (ms); 'auto' = dt * lambda_max")
    tau_lambda: float | None = Field(None, gt=0, description="multiplier time constant (ms); .inf allowed")
    tau_e: float = Field(0.0, ge=0, description="error-neuron time constant (ms); 0 = instantaneous")
    state_lr: float | Literal["auto"] | None = Field(None, description="paper's eta_h = dt/tau_h")
    alpha: float | None = Field(None, ge=0, description="paper's alpha = dt/tau_lambda")

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
        return self

    @property
    def uses_paper_parameters(self) -> bool:
        return self.state_lr is not None or self.alpha is not None

    @property
    def needs_auto_step(self) -> bool:
        return "auto" in (self.state_lr, self.tau_h)


class IntegratorConfig(_Strict):
    scheme: Scheme = "semi_implicit"
    dt: float = Field(1.0, gt=0, description="time step (ms)")
    steps: int | None = Field(None, ge=1)
    t_end: float | None = Field(None, gt=0, description="ms; alternative to steps")
    budget: int | None = Field(None, ge=1, description="discrete only: inference budget T")
    inner_steps: int = Field(1, ge=1, description="discrete only: primal steps per dual step")
    weight_credit_timing: Literal["pre_dual", "post_dual"] = "pre_dual"
    check_every: int = Field(16, ge=1, description="steps between divergence checks (syncs)")
    divergence_bound: float = Field(1e6, gt=0, description="|state| above this = diverged")

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
        if self.budget is not None and self.n_steps_from_length() not in (None, self.budget):
            raise ValueError(f"integrator.budget ({self.budget}) and steps/t_end "
                             f"({self.n_steps_from_length()}) disagree; give one of them")
        if self.t_end is not None:
            n = round(self.t_end / self.dt)
            if n < 1 or not math.isclose(n * self.dt, self.t_end, rel_tol=1e-9):
                raise ValueError(f"integrator.t_end ({self.t_end}) must be a positive multiple "
                                 f"of integrator.dt ({self.dt})")
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
        return self.budget if n is None else n


class RecordConfig(_Strict):
    every: int = Field(1, ge=1, description="record every this many steps (final step always)")
    variables: list[Variable] = Field(default_factory=lambda: list(ALL_VARIABLES))
    layers: Literal["all"] | list[int] = "all"
    samples: Literal["all"] | list[int] = "all"
    units: Literal["all"] | list[int] = "all"
    max_mb: float = Field(2048.0, gt=0, description="refuse runs whose traces exceed this")


Brian2Target = Literal["numpy", "cython", "cpp_standalone"]
Brian2Method = Literal["euler", "rk2", "heun", "rk4"]
# integrator.scheme -> Brian2 state-update method. ``heun`` is the explicit trapezoid (ctpc's heun),
# built as a Brian2 ExplicitStateUpdater: Brian2's own 'heun' is the *stochastic* Heun method, which
# is plain Euler for deterministic equations. The Gauss-Seidel schemes need no method: they are a
# fixed schedule of Euler updates (see the README, "Brian2 backend").
BRIAN2_METHOD_OF_SCHEME = {"euler": "euler", "heun": "heun", "rk4": "rk4"}


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


class Config(_Strict):
    name: str = ""
    description: str = ""
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    device: Literal["cpu", "cuda", "auto"] = "auto"
    backend: Literal["torch", "brian2"] = "torch"
    output: Path | None = None
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    integrator: IntegratorConfig = Field(default_factory=lambda: IntegratorConfig(steps=100))
    record: RecordConfig = Field(default_factory=RecordConfig)
    brian2: Brian2Config = Field(default_factory=Brian2Config, description="Brian2 backend options")
    sweep: dict[str, list[Any]] | None = Field(None, description="sweep axes (ctpc.sweep only)")

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if self.integrator.scheme == "discrete" and self.dynamics.tau_e > 0:
            raise ValueError("integrator.scheme 'discrete' is the paper's algorithm, whose error "
                             "neurons are instantaneous: set dynamics.tau_e: 0 or pick a "
                             "continuous scheme (euler, semi_implicit, heun, rk4)")
        if self.backend == "brian2":
            _check_brian2(self)
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
                              "(ctpc.load_config / ctpc.config.resolve does it)")
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
        return _plain(self.model_dump(mode="python"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_brian2(cfg: "Config") -> None:
    b2, scheme = cfg.brian2, cfg.integrator.scheme
    if cfg.device == "cuda":
        raise ValueError("device: 'cuda' is not available with backend: brian2 (Brian2 runs on "
                         "the CPU); set device: cpu or auto, or use backend: torch")
    if b2.method is not None and scheme not in BRIAN2_METHOD_OF_SCHEME:
        raise ValueError(
            f"brian2.method ({b2.method!r}) applies to the explicit schemes only; scheme "
            f"{scheme!r} is a fixed Gauss-Seidel schedule of Euler updates. Remove brian2.method "
            f"or set integrator.scheme to one of {sorted(BRIAN2_METHOD_OF_SCHEME)}")
    if b2.construction == "network_operation" and b2.target == "cpp_standalone":
        raise ValueError(
            "brian2.construction 'network_operation' runs Python code during the run, which "
            "brian2.target 'cpp_standalone' cannot do; use construction: synapses with "
            "cpp_standalone, or target: numpy / cython with network_operation")


def _plain(obj: Any) -> Any:
    # pydantic's json mode would turn inf into null; keep floats, stringify paths only.
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ------------------------------------------------------------------------- loading
def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"invalid configuration{where}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the config reference in README.md)"
        got = e.get("input")
        got_txt = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) \
            else f" (got {got!r})"
        lines.append(f"  - {path}: {msg}{got_txt}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML (numbers, lists, null, .inf...)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set integrator.dt=0.5")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key path; expected e.g. network.width=64")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any] | None) -> dict:
    """Return a copy of a raw config dict with ``key.path=value`` overrides applied."""
    raw = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else \
        [(".".join(k), v) for k, v in map(parse_override, overrides or [])]
    for dotted, value in items:
        keys = dotted.split(".")
        node = raw
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i + 1])} is a value, "
                                  "not a section")
            node = child
        node[keys[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def validate(raw: dict, where: str = "") -> Config:
    """Schema validation only (no files touched)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where)) from None


def load_config(source: Union[str, Path, dict, Config], overrides=None, *,
                resolve_files: bool = True) -> Config:
    """Load, override, validate and resolve a configuration.

    ``source`` is a YAML path, a dict or a Config; ``overrides`` is a list of ``"a.b=value"``
    strings or a ``{"a.b": value}`` dict. Relative paths in the file (data.path,
    network.weights) are taken relative to the current directory, as on the command line.
    Raises :class:`ConfigError` with the offending key path.
    """
    where = ""
    if isinstance(source, Config):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = source
    else:
        raw = read_yaml(source)
        where = f" in {source}"
        raw.setdefault("name", Path(source).stem)
    cfg = validate(apply_overrides(raw, overrides), where)
    return resolve(cfg) if resolve_files else cfg


def resolve(cfg: Config) -> Config:
    """Fill sizes from the data set and weights, and check everything that needs them."""
    from . import data as data_mod
    from .network import check_weights_file

    cfg = cfg.model_copy(deep=True)
    d_in, d_out, n_examples = data_mod.describe(cfg.data, cfg.network, cfg.seed)
    for key, found in (("input_dim", d_in), ("output_dim", d_out)):
        given = getattr(cfg.network, key)
        if given is None:
            setattr(cfg.network, key, found)
        elif found is not None and given != found:
            raise ConfigError(f"network.{key} is {given} but data.source={cfg.data.source!r} "
                              f"provides {found}; set network.{key}: {found} or null")
    if cfg.network.input_dim is None or cfg.network.output_dim is None:
        raise ConfigError("network.input_dim and network.output_dim are required for "
                          "data.source: synthetic")
    if n_examples is not None and cfg.data.offset + cfg.data.batch_size > n_examples:
        raise ConfigError(
            f"data.batch_size ({cfg.data.batch_size}) + data.offset ({cfg.data.offset}) exceeds "
            f"the {n_examples} examples of data.source={cfg.data.source!r}; lower one of them")
    if cfg.network.weights is not None:
        check_weights_file(cfg.network.weights, layer_shapes(cfg))
    _check_record(cfg)
    if cfg.dynamics.needs_auto_step:
        from .stability import resolve_auto_step  # needs the built network and batch
        cfg = resolve_auto_step(cfg)
    return cfg


def layer_shapes(cfg: Config) -> list[tuple[int, int]]:
    """[out, in] shape of w1 ... wL."""
    n, net = cfg.network.width, cfg.network
    return [(n, net.input_dim)] + [(n, n)] * (net.depth - 2) + [(net.output_dim, n)]


def _check_record(cfg: Config) -> None:
    rec = cfg.record
    bounds = {"layers": (1, cfg.n_hidden, "hidden layers 1 .. depth-1"),
              "samples": (0, cfg.data.batch_size - 1, "batch indices 0 .. batch_size-1"),
              "units": (0, cfg.network.width - 1, "units 0 .. width-1")}
    for key, (lo, hi, what) in bounds.items():
        sel = getattr(rec, key)
        if sel == "all":
            continue
        if not sel:
            raise ConfigError(f"record.{key}: empty list; use 'all' or a list of {what}")
        bad = [i for i in sel if not lo <= i <= hi]
        if bad:
            raise ConfigError(f"record.{key}: {bad} out of range; accepted: {what} "
                              f"({lo} .. {hi}), or 'all'")
        if len(set(sel)) != len(sel):
            raise ConfigError(f"record.{key}: duplicate entries in {sel}")
    if len(set(rec.variables)) != len(rec.variables):
        raise ConfigError(f"record.variables: duplicate entries in {rec.variables}")
