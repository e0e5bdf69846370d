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
from .memory import check_memory, check_trace_size
from .network import check_weights_file
from .stepsize import resolve_auto_step


# Hints for required keys that are missing (pydantic says only "Field required").
MISSING_HINTS = {
    "integrator": "the run length is missing: add integrator: {steps: N} (or t_end in ms; for "
                  "scheme discrete, budget)",
}


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"invalid configuration{where}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the config reference in README.md)"
        elif path in MISSING_HINTS and (e["type"] == "missing" or got is None):
            msg = MISSING_HINTS[path]
        elif e["type"] == "int_parsing" and isinstance(got, str) and _looks_like_float(got):
            msg += (f" (YAML reads {got} without a decimal point as text; write the integer "
                    "out in full, e.g. 1000000)")
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
        value = yaml.load(raw, Loader=UniqueKeyLoader)
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


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys and drops the first without a word
    (a second ``integrator:`` section would replace the first); this loader refuses it."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:      # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """A config file as a dict; every way of failing to read it is a ConfigError naming it."""
    if str(path).strip() == "":
        raise ConfigError("config file: empty path; give a YAML file such as "
                          "models/pcalm_deep.yaml")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory; give a YAML file, e.g. "
                          f"one of the models in it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not a UTF-8 text file (a binary or "
                          "another encoding); give a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror}); check "
                          "its permissions") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if raw is None:
        raise ConfigError(f"config file {str(path)!r} is empty; a config needs at least the run "
                          "length, e.g. integrator: {steps: 100}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got "
                          f"{type(raw).__name__}")
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
    # Sizes are known now: refuse what cannot fit before anything is allocated.
    check_memory(cfg)
    check_trace_size(cfg)
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
