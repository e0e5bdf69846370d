"""``dynamics.state_lr: auto`` / ``tau_h: auto``: eta_h = 1/lambda_max (spec section 3) for a
config, with its initial weights and its batch (it does not follow the weights during
training), by the config's ``dynamics.step_rule`` (the estimators: :mod:`ctpc.core.stepsize`).
"""
from __future__ import annotations

import json
from pathlib import Path

from ctpc.build.objects import build_model
from ctpc.config.schema import Config
from ctpc.core.stepsize import lambda_max, power_lambda_max

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
    for configs that share network, weights, batch, rho and rule."""
    key = _memo_key(cfg, iters, rtol)
    if key not in _MEMO:
        _MEMO[key] = _lambda_max_of(cfg, iters, rtol)
    return _MEMO[key]


def _lambda_max_of(cfg: Config, iters: int, rtol: float) -> float:
    cfg = cfg.model_copy(deep=True)
    cfg.dtype, cfg.device = "float64", "cpu"
    # the step size does not enter lambda_max; a placeholder lets an 'auto' config build
    if cfg.dynamics.state_lr == "auto":
        cfg.dynamics.state_lr = 1.0
    if cfg.dynamics.tau_h == "auto":
        cfg.dynamics.tau_h = 1.0
    model = build_model(cfg)
    if cfg.dynamics.step_rule == "paper":
        return float(power_lambda_max(model.net, model.weights, model.x, cfg.dynamics.rho)[0])
    return float(lambda_max(model.net, model.weights, model.x, cfg.dynamics.rho, iters, rtol)[0])


def resolve_auto_step(cfg: Config) -> Config:
    """``state_lr: auto`` -> 1/lambda_max; ``tau_h: auto`` -> dt * lambda_max (the same rule:
    dt/tau_h = 1/lambda_max)."""
    cfg = cfg.model_copy(deep=True)
    lam = activity_hessian_lambda_max(cfg)
    if cfg.dynamics.state_lr == "auto":
        cfg.dynamics.state_lr = 1.0 / lam
    if cfg.dynamics.tau_h == "auto":
        cfg.dynamics.tau_h = cfg.integrator.dt * lam
    return cfg
