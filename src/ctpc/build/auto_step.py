"""``dynamics.state_lr: auto`` / ``tau_h: auto``: eta_h = 1/lambda_max (spec section 3) for a
config, with its initial weights and its batch (it does not follow the weights during
training), by the config's ``dynamics.step_rule`` (the estimators: :mod:`ctpc.core.stepsize`).
Resolving computes it once (:func:`ctpc.build.resolve.resolve`) and keeps it, with the batch,
in the resolved config's ``found``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ctpc.build.objects import initial_weights
from ctpc.build.resolved import Resolved
from ctpc.config.schema import Config
from ctpc.core.network import Network
from ctpc.core.stepsize import lambda_max, power_lambda_max
from ctpc.data import load_batch

_MEMO: dict = {}


def _memo_key(cfg: Config, iters: int, rtol: float) -> str:
    """What lambda_max depends on: the network, its initial weights (seed or file), the batch,
    rho and the rule. Not the method, the step sizes or the training options: the cells of a
    sweep that differ only in those share one computation."""
    d = cfg.to_dict()
    return json.dumps([d["network"], d["data"], d["seed"], d["dynamics"]["rho"],
                       cfg.dynamics.step_rule, iters, rtol,
                       _file_stamp(cfg.network.weights), _file_stamp(cfg.data.path)],
                      sort_keys=True, default=str)


def _file_stamp(path) -> tuple | None:
    if path is None:
        return None
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def activity_hessian_lambda_max(cfg: Config, iters: int = 5000, rtol: float = 1e-12) -> float:
    """lambda_max for one config's network and batch (float64, CPU) by the config's
    ``dynamics.step_rule`` (``iters``/``rtol`` apply to the exact rule); remembered per process
    for configs that share network, weights, batch, rho and rule. A resolved config gives its
    weights and batch as resolving found them (no file is read again)."""
    found = cfg.found if isinstance(cfg, Resolved) else None
    return _lambda_max(cfg, iters, rtol, found.weights if found else None,
                       found.batch if found else None)[0]


def _lambda_max(cfg: Config, iters: int, rtol: float, weights, batch):
    """(lambda_max, the batch loaded for it or None when it was remembered)."""
    key = _memo_key(cfg, iters, rtol)
    if key in _MEMO:
        return _MEMO[key], None
    if batch is None:
        batch = load_batch(cfg.data, cfg.network, cfg.seed)
    _MEMO[key] = _lambda_max_of(cfg, iters, rtol, weights, batch)
    return _MEMO[key], batch


def _lambda_max_of(cfg: Config, iters: int, rtol: float, weights, batch) -> float:
    """From the network's structure, its initial weights (``weights``: those read from
    network.weights, else drawn from the seed) and the batch's x, in float64 on the CPU. The
    step size does not enter lambda_max: an 'auto' config needs no placeholder."""
    device, dtype = torch.device("cpu"), torch.float64
    net = Network.from_config(cfg, device, dtype)
    w = initial_weights([cfg], device, dtype, from_files=[weights])
    x = torch.as_tensor(np.stack([batch[0]]), device=device, dtype=dtype)
    if cfg.dynamics.step_rule == "paper":
        return float(power_lambda_max(net, w, x, cfg.dynamics.rho)[0])
    return float(lambda_max(net, w, x, cfg.dynamics.rho, iters, rtol)[0])


def resolve_auto_step(cfg: Config, weights=None) -> tuple[float, tuple | None]:
    """``state_lr: auto`` -> 1/lambda_max; ``tau_h: auto`` -> dt * lambda_max (the same rule:
    dt/tau_h = 1/lambda_max), set in ``cfg`` (the config being resolved, changed in place).
    ``weights``: those resolving read from network.weights. Returns (lambda_max, the batch it
    loaded for it, or None when lambda_max was remembered)."""
    lam, batch = _lambda_max(cfg, 5000, 1e-12, weights, None)
    if cfg.dynamics.state_lr == "auto":
        cfg.dynamics.state_lr = 1.0 / lam
    if cfg.dynamics.tau_h == "auto":
        cfg.dynamics.tau_h = cfg.integrator.dt * lam
    return lam, batch
