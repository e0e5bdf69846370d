"""Resolving a configuration: sizes from the data set and the weights file, the ``auto`` values
(budget, step size), and every check that needs them (memory, trace size, float32 range), so
that a run starts from a config whose every number is known and checked.

:func:`load_config` = :func:`ctpc.config.load.read_config` (YAML, overrides, schema) followed
by :func:`resolve`. Everything a run reads passes through it once, at the edge: the result is a
:class:`Resolved` config (:mod:`ctpc.build.resolved`), immutable, which carries what resolving
found (``cfg.found``: the weights read from the file, the lambda_max of ``state_lr: auto``, the
batch it was computed on, the data's sizes, the digests of the files read). ``ctpc.simulate``,
``ctpc.train`` and a sweep's workers take it as it is and resolve nothing again; a plain
:class:`Config` given to them is resolved first, once.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from ctpc import data as data_mod
from ctpc.build.auto_step import resolve_auto_step
from ctpc.build.resolved import Found, FrozenDict, Resolved, freeze
from ctpc.config.load import read_config
from ctpc.config.schema import Config, ConfigError, layer_shapes
from ctpc.core.network import bias_shapes, check_weights_file
from ctpc.results.memory import check_memory, check_trace_size

__all__ = ["load_config", "resolve", "resolved", "in_float64_on_cpu", "Resolved", "Found",
           "check_number_range", "unused_by_bp", "warn_unused_by_bp"]


def load_config(source: Union[str, Path, dict, Config], overrides=None, *,
                resolve_files: bool = True) -> Resolved | Config:
    """Read, override, validate (:func:`ctpc.config.load.read_config`) and resolve a
    configuration: a :class:`Resolved` config, which behaves as a :class:`Config` (``cfg.
    network.depth``, ``cfg.to_dict()``) but cannot be changed. A :class:`Resolved` config
    without overrides is returned as it is (nothing is read or resolved again); with overrides
    it is a new config, resolved anew. ``resolve_files=False`` stops after validation and
    returns a plain, mutable :class:`Config`. Raises :class:`ConfigError` with the offending
    key path.
    """
    if resolve_files and isinstance(source, Resolved) and no_overrides(overrides):
        return source
    cfg = read_config(source, overrides)
    if not resolve_files:
        return cfg
    return resolve(cfg, config_file=config_file_of(source))


def no_overrides(overrides) -> bool:
    return overrides is None or (isinstance(overrides, (list, tuple, dict)) and not overrides)


def config_file_of(source) -> Path | None:
    """The YAML file a config comes from (an input no output may replace), if any."""
    if isinstance(source, (str, Path)):
        return Path(source)
    return source.config_file if isinstance(source, Resolved) else None


def resolved(cfg: Config) -> Resolved:
    """``cfg`` itself if it is resolved, else :func:`resolve` of it (once)."""
    return cfg if isinstance(cfg, Resolved) else resolve(cfg)


def resolve(cfg: Config, *, config_file: str | Path | None = None) -> Resolved:
    """Fill sizes from the data set and weights, and check everything that needs them; the
    result is immutable and remembers what it found (:class:`Found`). A config resolved
    already is returned as it is. ``config_file``: the YAML it was read from, if any."""
    if isinstance(cfg, Resolved):
        return cfg
    cfg = cfg.model_copy(deep=True)
    d_in, d_out, n_examples = data_mod.describe(cfg.data, cfg.network, cfg.seed, cfg.dtype)
    for key, found in (("input_dim", d_in), ("output_dim", d_out)):
        given = getattr(cfg.network, key)
        if found is not None and found < 1:     # the sources refuse this; a last guard
            raise ConfigError(f"data.source={cfg.data.source!r} provides {found} "
                              f"{'inputs' if key == 'input_dim' else 'classes'} per example; "
                              "check the data file")
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
    digests = data_mod.file_digests(cfg.data)
    weights = None
    if cfg.network.weights is not None:     # read once: the run takes them from cfg.found
        weights = _read_only(check_weights_file(cfg.network.weights, layer_shapes(cfg),
                                                cfg.dtype, digests=digests,
                                                bias_shapes=bias_shapes(cfg)))
    if cfg.integrator.budget == "auto":
        cfg.integrator.budget = 2 * cfg.network.depth      # the paper's T = 2L
    _check_record(cfg)
    # Sizes are known now: refuse what cannot fit before anything is allocated.
    splits = None
    if cfg.training is not None and cfg.data.source != "synthetic":
        splits = tuple(data_mod.split_size(cfg.data, cfg.network, s)
                       if s in data_mod.available_splits(cfg.data) else 0
                       for s in data_mod.SPLITS)
    check_memory(cfg, splits)
    if cfg.training is None:
        # Training records no traces (ctpc.train); ctpc.simulate of a training config checks
        # them when it plans its recording (ctpc.sim.recording.plan_recording).
        check_trace_size(cfg)
    check_number_range(cfg)
    lam = batch = None
    if cfg.dynamics.needs_auto_step:
        lam, batch = resolve_auto_step(cfg, weights)
        check_number_range(cfg)
    found = Found(n_examples=n_examples, split_sizes=splits, weights=weights, lambda_max=lam,
                  batch=_read_only(batch) if cfg.training is None else None,
                  digests=FrozenDict(digests),
                  config_file=None if config_file is None else Path(config_file))
    return freeze(cfg, found)


def _read_only(value):
    """What a reader returned, kept in a resolved config: arrays read-only, lists as tuples."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_read_only(v) for v in value)
    return value


def in_float64_on_cpu(cfg: Config) -> Resolved:
    """The resolved run of ``cfg`` in float64 on the CPU (the studies' exact arithmetic), from
    what resolving it found: sizes, weights and lambda_max do not depend on either, and float64
    holds whatever float32 holds, so nothing is read or resolved again."""
    cfg = resolved(cfg)
    if cfg.dtype == "float64" and cfg.device == "cpu":
        return cfg
    plain = cfg.unresolved()
    plain.dtype, plain.device = "float64", "cpu"
    return freeze(plain, cfg.found)


FLOAT32 = {"max": 3.4028234663852886e38, "tiny": 1.1754943508222875e-38}


def _range_terms(cfg: Config) -> list[tuple[str, str, float, bool]]:
    """``(key, what, value, derived)`` of every config number that a run puts into a tensor
    (or a kernel's scalar argument) of the config's dtype: the time step, the penalty, every
    rate 1/tau and step dt/tau of the dynamics (the inverse of what the config gives, and
    'auto' step sizes once resolved), the divergence bounds, the learning rate and the weight
    time constant. ``derived``: computed from the key (an exact 0 means it underflowed); a
    string names the other key it is computed from."""
    it, d, t = cfg.integrator, cfg.dynamics, cfg.training
    dt, terms = it.dt, []
    if d.method != "bp":      # bp (training only) has no neuron dynamics: none of these
        terms += [("integrator.dt", "the value", dt, False),
                  ("integrator.divergence_bound", "the value", it.divergence_bound, False)]
        if math.isfinite(it.growth_bound):
            terms.append(("integrator.growth_bound", "the value", it.growth_bound, False))
        terms.append(("dynamics.rho", "the value", d.rho, False))
    if d.method != "bp" and not d.needs_auto_step:      # 'auto': checked once resolved
        tau_h, tau_l = cfg.rates()
        paper = d.uses_paper_parameters
        pops = [("h", tau_h, "dynamics.state_lr" if paper else "dynamics.tau_h")]
        if math.isfinite(tau_l):
            pops.append(("lambda", tau_l, "dynamics.alpha" if paper else "dynamics.tau_lambda"))
        if d.tau_e > 0:
            pops.append(("e", d.tau_e, "dynamics.tau_e"))
        for name, tau, key in pops:
            terms.append((key, f"the rate 1/tau_{name}", 1.0 / tau, True))
            terms.append((key, f"the step dt/tau_{name}", dt / tau, "integrator.dt"))
    if t is not None:
        if isinstance(t.lr, float):
            terms.append(("training.lr", "the value", t.lr, False))
        if t.tau_w is not None:
            terms.append(("training.tau_w", "the rate 1/tau_w", 1.0 / t.tau_w, True))
            terms.append(("training.tau_w", "the step dt/tau_w", dt / t.tau_w,
                          "integrator.dt"))
        if t.optimizer == "sgd" and t.momentum:
            terms.append(("training.momentum", "the value", t.momentum, False))
    return terms


def check_number_range(cfg: Config) -> None:
    """Refuse (one line per key) a config number that the run's dtype cannot hold: infinite
    once derived (a rate 1/tau of a tiny tau), or with dtype float32 beyond its range
    (|x| > 3.4e38, which becomes inf) or below its smallest normal number (|x| < 1.2e-38,
    which loses its precision or becomes 0). torch would otherwise fail deep inside a step
    ("value cannot be converted to type float without overflow") or run with inf or 0."""
    problems, seen = [], set()
    for key, what, value, derived in _range_terms(cfg):
        if key in seen:
            continue
        mag = abs(value)
        what = f"{what} {'= ' if derived else ''}{value:.3g}"
        change = f"change {key}" + (f" or {derived}" if isinstance(derived, str) else "")
        if not math.isfinite(value):
            why = f"{what} is beyond the range of any float"
            fix = change
        elif derived and value == 0:
            why = f"{what}: it underflowed (the quotient is too small for any float)"
            fix = change
        elif cfg.dtype == "float32" and mag > FLOAT32["max"]:
            why = (f"{what} is beyond the float32 range (|x| <= "
                   f"{FLOAT32['max']:.3g}) of dtype: float32; it would become inf")
            fix = f"set dtype: float64, or {change}"
        elif cfg.dtype == "float32" and 0 < mag < FLOAT32["tiny"]:
            why = (f"{what} is below the smallest normal float32 "
                   f"({FLOAT32['tiny']:.3g}) of dtype: float32; it would lose its precision or "
                   "become 0")
            fix = f"set dtype: float64, or {change}"
        else:
            continue
        seen.add(key)
        problems.append(f"{key}: {why}; {fix}")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("numbers out of range:\n" + "\n".join(f"  - {p}" for p in problems))


# The keys of dynamics: that only the neuron dynamics of pc / pcalm read.
PC_ONLY_DYNAMICS = ("rho", "tau_h", "tau_lambda", "tau_e", "state_lr", "alpha", "step_rule")


def unused_by_bp(cfg: Config) -> list[str]:
    """The PC-only dynamics keys a ``method: bp`` config sets to other than their defaults."""
    if cfg.dynamics.method != "bp":
        return []
    fields = type(cfg.dynamics).model_fields
    return [f"dynamics.{k}" for k in PC_ONLY_DYNAMICS
            if getattr(cfg.dynamics, k) != fields[k].default]


def warn_unused_by_bp(cfg: Config) -> None:
    """One warning line for a single run (not per sweep cell: the caller decides) whose
    ``method: bp`` config sets keys that bp never reads."""
    keys = unused_by_bp(cfg)
    if keys:
        warnings.warn(f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'} unused by "
                      "dynamics.method 'bp' (backprop by autograd has no neuron dynamics): "
                      "stored with the run but without effect; remove "
                      f"{'it' if len(keys) == 1 else 'them'} or use method pc or pcalm",
                      UserWarning, stacklevel=3)


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
