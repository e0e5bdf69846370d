"""Noisy neurons against BP alignment (guide: biology, "Noisy neurons").

* :func:`noise_alignment`: the PC-ALM fixed point of a small network on the digits data
  (float64, ``semi_implicit``, the paper's step sizes: ``state_lr: auto``, ``alpha: 1``,
  dt = 1 ms), run with white noise of the same sigma on the activity neurons and on the
  multiplier neurons (``dynamics.noise: {h: sigma, lambda: sigma}``); after the fixed point is
  reached, the weight read-out's BP cosine (``bp_cos``) and relative error (``bp_relerr``) per
  weight layer are averaged over the second half of the record. At sigma = 0 the read-out is
  BP's gradient (spec section 5); the noise makes each recorded read-out a noisy estimate.
* :func:`noise_training`: one digits training cell (``models/train_digits.yaml`` with a
  continuous scheme, since ``discrete`` has no stochastic form) with noise against the
  noise-free run: final test accuracy and the probe's BP alignment.

Both return an :class:`xarray.Dataset` whose ``wall_s`` attribute is the study's wall time.
``small``: a few seconds (fewer steps / updates, a smaller network).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[3]


def _fixed_point_config(sigma: float, activation: str, small: bool) -> dict:
    # full: 6000 steps, so that the noise-free run has settled at the fixed point well before
    # the averaging window (the second half) starts
    width, depth, steps = (8, 3, 400) if small else (16, 6, 6000)
    return {"name": f"noise_{activation}_{sigma:g}", "dtype": "float64", "device": "cpu",
            "seed": 0,
            "network": {"width": width, "depth": depth, "activation": activation},
            "data": {"source": "digits", "batch_size": 16 if small else 64},
            "dynamics": {"method": "pcalm", "state_lr": "auto", "alpha": 1.0,
                         "noise": {"h": float(sigma), "lambda": float(sigma)}},
            "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": steps},
            "record": {"every": 5, "variables": ["h"], "samples": [0]}}


def noise_alignment(sigmas=(0.0, 1e-3, 3e-3, 1e-2, 3e-2), activation: str = "linear",
                    small: bool = True) -> xr.Dataset:
    """BP cosine and relative error of the weight read-out at the noisy PC-ALM fixed point.

    ``sigmas``: noise on h and on lambda (the same value; 1/sqrt(ms)); ``activation``:
    'linear', 'tanh' or 'relu'. Returns variables ``bp_cos``, ``bp_relerr`` [sigma, weight]
    (means over the second half of the record: the fixed point is reached well before it,
    ~tens of steps for these networks) and their standard deviations over that window
    (``bp_cos_sd``, ``bp_relerr_sd``); attrs ``wall_s``, ``steps``, ``window_records``."""
    import ctpc
    t0 = time.perf_counter()
    cos, rel, cos_sd, rel_sd = [], [], [], []
    for s in sigmas:
        ds = ctpc.simulate(_fixed_point_config(s, activation, small))
        win = ds.isel(time=slice(ds.sizes["time"] // 2, None))
        cos.append(win.bp_cos.mean("time").values)
        rel.append(win.bp_relerr.mean("time").values)
        cos_sd.append(win.bp_cos.std("time").values)
        rel_sd.append(win.bp_relerr.std("time").values)
        weights, steps, n_win = ds.weight.values, int(ds.attrs["n_steps"]), win.sizes["time"]
    dims = ("sigma", "weight")
    return xr.Dataset(
        {"bp_cos": (dims, np.array(cos)), "bp_relerr": (dims, np.array(rel)),
         "bp_cos_sd": (dims, np.array(cos_sd)), "bp_relerr_sd": (dims, np.array(rel_sd))},
        coords={"sigma": np.asarray(sigmas, dtype=float), "weight": weights},
        attrs={"activation": activation, "small": int(small), "steps": steps,
               "window_records": n_win, "wall_s": time.perf_counter() - t0,
               "noise_on": "h and lambda, the same sigma (1/sqrt(ms))"})


def noise_training(small: bool = True, sigma: float = 0.01) -> xr.Dataset:
    """One digits training cell (``models/train_digits.yaml``, scheme semi_implicit, T = 2L
    steps of dt = 1 ms) with noise sigma on h and lambda against the noise-free cell: final
    test accuracy and the last evaluation's probe alignment (``bp_cos`` per weight layer).
    ``small``: a narrow network, a few updates. Variables [noise] with noise = ('off', 'on')."""
    import ctpc
    t0 = time.perf_counter()
    sets = ["integrator.scheme=semi_implicit", "integrator.budget=null", "device=cpu",
            "dtype=float64"]
    if small:
        sets += ["network.width=16", "network.depth=4", "integrator.steps=8",
                 "data.train_subset=1024", "training.epochs=3", "training.lr=0.01",
                 "training.eval_every=null"]
    else:
        sets += ["integrator.steps=16"]     # T = 2L, the file's 20 epochs and eval_every 50
    acc, cos, walls = [], [], []
    for on in (False, True):
        extra = [f"dynamics.noise.h={sigma if on else 0}",
                 f"dynamics.noise.lambda={sigma if on else 0}"]
        t = time.perf_counter()
        ds = ctpc.train(str(ROOT / "models" / "train_digits.yaml"), sets + extra)
        walls.append(time.perf_counter() - t)
        acc.append(float(ds.test_acc.isel(eval=-1)))
        cos.append(ds.bp_cos.isel(eval=-1).values)
        weights = ds.weight.values
    return xr.Dataset(
        {"test_acc": ("noise", np.array(acc)), "bp_cos": (("noise", "weight"), np.array(cos)),
         "wall_s_run": ("noise", np.array(walls))},
        coords={"noise": ["off", "on"], "weight": weights},
        attrs={"sigma": sigma, "small": int(small), "wall_s": time.perf_counter() - t0})
