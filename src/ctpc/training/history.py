"""A training run's history -> its labelled ``xarray.Dataset`` (one per replica).

Schema (docs/guide/training.md, "Output"): per update ``train_loss``, ``grad_norm``, ``weight_norm``,
``energy`` and the per-layer ``res_norm``, ``lam_norm``, ``credit_norm`` at the end of inference;
per evaluation point ``train_acc``, ``test_acc``, ``train_mse``, ``test_mse``, ``train_ce``,
``test_ce``, ``bp_cos_global`` and per weight matrix ``bp_cos``, ``bp_relerr``.
"""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import xarray as xr

from ctpc.common.version import __version__
from ctpc.common.labels import var_attrs
from ctpc.training.loop import EVAL_SCALARS, EVAL_WEIGHT, LAYER_SERIES, UPDATE_SERIES, TrainState
from ctpc.training.setup import TrainSetup

# Short long_name (the axis label), units only where there are any, the sentence in
# description (ctpc.common.labels). Accuracies are fractions, losses and norms dimensionless.
ATTRS = {
    "train_loss": var_attrs("training loss", None,
                            "training loss l = 1/2 |y_hat - y|^2 (batch mean) at the "
                            "feed-forward point, before the update"),
    "grad_norm": var_attrs("update norm ‖dL/dW‖", None,
                           "norm of the weight update direction (the rule's dL/dW, all "
                           "matrices)"),
    "weight_norm": var_attrs("weight norm ‖W‖", None, "norm of all weights after the update"),
    "energy": var_attrs("energy L_ρ", None, "L_rho at the end of the inference (PC: F; BP: none)"),
    "res_norm": var_attrs("residual norm ‖r_l‖", None,
                          "RMS over the batch of the residual norm ||r_l|| at the end of "
                          "inference"),
    "lam_norm": var_attrs("multiplier norm ‖λ_l‖", None,
                          "RMS over the batch of the multiplier norm ||lambda_l|| at the end"),
    "credit_norm": var_attrs("credit norm ‖g_l‖", None,
                             "RMS over the batch of the credit norm ||rho r_l + lambda_l|| at "
                             "the end"),
    "train_acc": var_attrs("train accuracy", None, "accuracy (argmax) on the whole training split"),
    "test_acc": var_attrs("test accuracy", None, "accuracy (argmax) on the whole test split"),
    "train_mse": var_attrs("train MSE", None, "1/2 |y_hat - y|^2, mean over the training split"),
    "test_mse": var_attrs("test MSE", None, "1/2 |y_hat - y|^2, mean over the test split"),
    "train_ce": var_attrs("train cross-entropy", None,
                          "cross-entropy of softmax(y_hat), mean over the training split"),
    "test_ce": var_attrs("test cross-entropy", None,
                         "cross-entropy of softmax(y_hat), mean over the test split"),
    "bp_cos": var_attrs("BP cosine", None,
                        "cosine between the rule's dL/dW_l and BP's on the probe batch"),
    "bp_relerr": var_attrs("relative error", None,
                           "relative error of the rule's dL/dW_l against BP's on the probe batch"),
    "bp_cos_global": var_attrs("BP cosine, all weights", None,
                               "cosine between the whole-network update and BP's on the probe "
                               "batch"),
    "eval_wall_time": var_attrs("wall time", "s",
                                "wall time since the start of the run at the evaluation"),
    "eval_update": var_attrs("update", None, "updates done at the evaluation"),
    "eval_epoch": var_attrs("epoch", None, "epochs done at the evaluation"),
}


def training_dataset(setup: TrainSetup, state: TrainState, replica: int,
                     command: str | None = None) -> xr.Dataset:
    cfg = setup.cfgs[replica]
    n_up = state.update
    diverged = state.diverged[replica]
    H, L = setup.model.net.n_hidden, setup.model.net.depth
    data = {}
    for k in UPDATE_SERIES:
        v = np.asarray(state.history[k][:n_up, replica], dtype=float) if n_up else np.zeros(0)
        data[k] = (("update",), _mask(v, diverged))
    for k in LAYER_SERIES:
        v = state.history[k][:n_up, :, replica] if n_up else np.zeros((0, H))
        data[k] = (("update", "layer"), _mask(np.asarray(v, dtype=float), diverged))
    ev = state.evals
    for k in EVAL_SCALARS:
        data[k] = (("eval",), np.array([e[k][replica] for e in ev], dtype=float))
    for k in EVAL_WEIGHT:
        data[k] = (("eval", "weight"),
                   np.array([e[k][:, replica] for e in ev], dtype=float).reshape(len(ev), L))
    data["eval_wall_time"] = (("eval",), np.array([e["wall_s"] for e in ev], dtype=float))
    coords = {
        "update": ("update", np.arange(1, n_up + 1),
                   var_attrs("update", None, "optimiser update (1-based)")),
        "eval": ("eval", np.arange(len(ev)), var_attrs("evaluation", None, "evaluation point")),
        "eval_update": ("eval", np.array([e["update"] for e in ev], dtype=np.int64),
                        ATTRS["eval_update"]),
        "eval_epoch": ("eval", np.array([e["epoch"] for e in ev], dtype=float),
                       ATTRS["eval_epoch"]),
        "layer": ("layer", np.arange(1, H + 1),
                  var_attrs("hidden layer l", None, "hidden layer l (1 .. L-1)")),
        "weight": ("weight", np.arange(1, L + 1),
                   var_attrs("weight matrix W_l", None, "W_l (1 .. L) feeds layer l")),
    }
    ds = xr.Dataset(data, coords=coords)
    for name, attrs in ATTRS.items():
        ds[name].attrs.update(attrs)
    ds.attrs = _attributes(setup, state, cfg, diverged, command)
    return ds


def _mask(v: np.ndarray, diverged: int | None) -> np.ndarray:
    """NaN after a replica's divergence (it was frozen; its later entries mean nothing)."""
    if diverged is not None:
        v = v.copy()
        v[diverged:] = np.nan
    return v


def _attributes(setup: TrainSetup, state: TrainState, cfg, diverged, command) -> dict:
    tau_h, tau_l = cfg.rates()
    dt = cfg.integrator.dt
    samples = state.update * cfg.data.batch_size
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    t = setup.training
    attrs = {
        "Conventions": "CF-1.10",
        "title": f"ctpc training, {cfg.dynamics.method}, {cfg.name}".strip(", "),
        "history": f"{now}: {command or 'ctpc.train() (Python API)'} (ctpc {__version__})",
        "source": f"ctpc {__version__}", "ctpc_version": __version__, "kind": "training",
        "method": cfg.dynamics.method, "scheme": cfg.integrator.scheme,
        "plasticity": t.plasticity, "optimizer": t.optimizer, "lr": setup.lr,
        "n_steps": 0 if cfg.dynamics.method == "bp" else cfg.integrator.n_steps,
        "dt": dt, "tau_h": tau_h, "tau_lambda": tau_l, "eta_h": dt / tau_h,
        "alpha": dt / tau_l, "rho": cfg.dynamics.rho,
        "activation": cfg.network.activation, "depth": cfg.network.depth,
        "width": cfg.network.width, "batch_size": cfg.data.batch_size, "dtype": cfg.dtype,
        "seed": cfg.seed, "device": str(setup.model.net.device),
        "n_train": setup.train.n, "n_test": setup.test.n,
        "updates_per_epoch": setup.updates_per_epoch, "n_updates": setup.total_updates,
        "updates_completed": state.update,
        "status": "ok" if diverged is None else "diverged",
        "wall_time_s": state.elapsed_s, "train_time_s": state.train_s,
        "samples_per_s": samples / state.train_s if state.train_s > 0 else float("nan"),
        "config": cfg.to_yaml(),
    }
    if t.tau_w is not None:
        attrs["tau_w"] = t.tau_w
    if diverged is not None:
        attrs["diverged_at_update"] = diverged
    return attrs
