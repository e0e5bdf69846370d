"""Loading a configuration: YAML or dict, ``--set`` overrides, schema validation
(:mod:`ctpc.config`), then resolution against files (data sizes, weight shapes) and the
``auto`` step size. Everything a run reads passes through :func:`load_config` once, at the edge.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import ValidationError

from . import data as data_mod
from .config import Config, ConfigError, layer_shapes
from .network import check_weights_file
from .stepsize import resolve_auto_step


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
            f"the {n_examples} examples of the {cfg.data.split} split (data.split) of "
            f"data.source={cfg.data.source!r}; lower one of them")
    if cfg.network.weights is not None:
        check_weights_file(cfg.network.weights, layer_shapes(cfg))
    if cfg.integrator.budget == "auto":
        cfg.integrator.budget = 2 * cfg.network.depth      # the paper's T = 2L
    _check_record(cfg)
    if cfg.dynamics.needs_auto_step:
        cfg = resolve_auto_step(cfg)
    return cfg


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
