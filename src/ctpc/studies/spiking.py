"""Spiking error neurons (Brian2, ``brian2.errors: spiking``) against the rate model.

The spiking network's mean field is the leaky-error rate model with the same tau_e
(:func:`ctpc.sim.backends.brian2_backend.equations._spiking_groups`); its shot noise has
variance e_max |r| / (2 r_max tau_e) per error neuron, so it converges to the rate model as
r_max grows at fixed e_max. Two studies:

* :func:`spiking_limit`: the final weight read-out of the spiking network against BP and
  against the rate model's read-out, per activation and r_max;
* :func:`spiking_arrival`: does credit still arrive ballistically (t_arrival ~ L^1, spec 5.3)
  when the error neurons spike?

Both compare with the rate model run on the torch backend (leaky errors, same tau_e and dt:
it agrees with Brian2's rate mode to round-off, tests/test_brian2.py), and both set e_max from
the rate run: twice its largest |e| (over time, layers, samples, units), so that the error
neurons of the spiking run rarely saturate and its mean field is the rate model's. Everything is
float64 on Brian2's numpy target, seeded (config seed 0). Figures: :mod:`ctpc.analysis.biology`.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import xarray as xr

from ctpc.analysis.propagation import arrival_scaling, credit_arrival
from ctpc.sim.simulation import simulate

R_MAXES = (1e2, 1e3, 1e4, 1e5)          # Hz
ACTIVATIONS = ("linear", "relu")
# Limit study: dt = 0.01 ms so that the largest r_max (100 kHz) has r_max dt = 1 (a Brian2
# neuron fires at most once per step); tau_h = tau_lambda = 1 ms, tau_e = 1 ms.
LIMIT_SIZES = {"small": {"depth": 3, "width": 4, "batch": 4, "t_end": 5.0},
               "full": {"depth": 4, "width": 8, "batch": 8, "t_end": 10.0}}
LIMIT_DT = 0.01
# Arrival study: sims/propagation.py's linear PC-ALM chain (eta_h = 0.24, alpha = 1 at 1 ms, i.e.
# tau_h = 1/0.24 ms, tau_lambda = 1 ms, budget 4L ms), integrated at dt = 0.1 ms with leaky
# (tau_e = 0.5 ms) rate or spiking (r_max = 10 kHz: r_max dt = 1) error neurons.
ARRIVAL_SIZES = {"small": {"depths": (4, 8, 16), "width": 4, "batch": 4},
                 "full": {"depths": (8, 16, 32, 64), "width": 8, "batch": 8}}
ARRIVAL_DT, ARRIVAL_TAU_E, ARRIVAL_R_MAX = 0.1, 0.5, 1e4


def _base(activation: str, depth: int, width: int, batch: int, dt: float, t_end: float,
          dynamics: dict, record: dict) -> dict:
    return {"seed": 0, "dtype": "float64", "device": "cpu",
            "network": {"width": width, "depth": depth, "activation": activation,
                        "input_dim": 5, "output_dim": 3},
            "data": {"source": "synthetic", "batch_size": batch},
            "dynamics": {"method": "pcalm", "rho": 1.0, **dynamics},
            "integrator": {"scheme": "euler", "dt": dt, "t_end": t_end},
            "record": record}


def _e_max(rate: xr.Dataset) -> float:
    """Twice the rate run's largest |e|: the spiking run's error neurons rarely saturate."""
    return 2.0 * float(np.nanmax(np.abs(rate["err"].values)))


def _spiking(cfg: dict, r_max: float, e_max: float) -> dict:
    return {**cfg, "backend": "brian2",
            "brian2": {"errors": "spiking", "r_max": float(r_max), "e_max": e_max}}


def _readout(ds: xr.Dataset, prefix: str = "grad_w") -> list[np.ndarray]:
    return [ds[f"{prefix}{i}"].values for i in range(1, ds.sizes["weight"] + 1)]


def _compare(est: list[np.ndarray], ref: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per weight matrix and over all of them (last entry): cosine and relative error
    ||est - ref|| / ||ref||."""
    pairs = list(zip(est, ref)) + [(np.concatenate([e.ravel() for e in est]),
                                    np.concatenate([r.ravel() for r in ref]))]
    cos, rel = [], []
    for e, r in pairs:
        e, r = e.ravel(), r.ravel()
        ne, nr = np.linalg.norm(e), np.linalg.norm(r)
        cos.append(float(e @ r / (ne * nr)) if ne > 0 and nr > 0 else np.nan)
        rel.append(float(np.linalg.norm(e - r) / nr) if nr > 0 else np.nan)
    return np.asarray(cos), np.asarray(rel)


def spiking_limit(r_maxes: Sequence[float] = R_MAXES,
                  activations: Sequence[str] = ACTIVATIONS, small: bool = True) -> xr.Dataset:
    """The spiking network's final weight read-out converging to the rate model's as r_max grows.

    For each activation: one rate run (torch, leaky errors tau_e = 1 ms) and one spiking run
    (Brian2) per r_max (Hz), same network, batch, dt (0.01 ms) and run length
    (``small``: depth 3, N = B = 4, 5 ms; else depth 4, N = B = 8, 10 ms). The read-outs are
    compared **at the end of the run** (the final ``grad_w*``), per weight matrix and over all of
    them (``weight = 0``). Returns a Dataset over (activation, r_max, weight) with ``bp_cos``,
    ``bp_relerr`` (spiking vs BP), ``rate_cos``, ``rate_relerr`` (spiking vs the rate model's
    read-out), over (activation, weight) ``rate_bp_cos`` / ``rate_bp_relerr`` (the rate model vs
    BP), ``bp_cos_window`` (spiking: the recorded BP cosine averaged over the last quarter of the
    run), ``e_max`` (activation), ``spikes`` (total spikes of the run) and ``wall_time_s``
    (activation, r_max; the rate run's in ``rate_wall_time_s``).
    """
    size = LIMIT_SIZES["small" if small else "full"]
    r_maxes = [float(r) for r in r_maxes]
    n_w = size["depth"]
    shape = (len(activations), len(r_maxes), n_w + 1)
    out = {k: np.full(shape, np.nan) for k in ("bp_cos", "bp_relerr", "rate_cos",
                                               "rate_relerr", "bp_cos_window")}
    wall, spikes = np.full(shape[:2], np.nan), np.zeros(shape[:2], dtype=np.int64)
    rate_cos, rate_rel = np.full((len(activations), n_w + 1), np.nan), \
        np.full((len(activations), n_w + 1), np.nan)
    rate_wall, e_maxes = np.full(len(activations), np.nan), np.full(len(activations), np.nan)
    for a, act in enumerate(activations):
        cfg = _base(act, size["depth"], size["width"], size["batch"], LIMIT_DT, size["t_end"],
                    {"tau_h": 1.0, "tau_lambda": 1.0, "tau_e": 1.0},
                    {"every": 10, "samples": "all", "variables": ["err"]})
        t0 = time.perf_counter()
        rate = simulate(cfg, progress=False)
        rate_wall[a] = time.perf_counter() - t0
        e_maxes[a] = e_max = _e_max(rate)
        ref, bp = _readout(rate), _readout(rate, "bp_grad_w")
        rate_cos[a], rate_rel[a] = _compare(ref, bp)
        for k, r_max in enumerate(r_maxes):
            t0 = time.perf_counter()
            spk = simulate({**_spiking(cfg, r_max, e_max), "record": {
                "every": 10, "samples": "all", "variables": []}}, progress=False)
            wall[a, k] = time.perf_counter() - t0
            spikes[a, k] = int(spk["spike_count"].sum())
            est = _readout(spk)
            out["bp_cos"][a, k], out["bp_relerr"][a, k] = _compare(est, bp)
            out["rate_cos"][a, k], out["rate_relerr"][a, k] = _compare(est, ref)
            tail = spk["bp_cos"].where(spk["time"] >= 0.75 * size["t_end"])
            window = tail.mean("time").values
            out["bp_cos_window"][a, k] = np.append(window, np.nan)
    dims = ("activation", "r_max", "weight")
    attrs = {
        "bp_cos": ("BP cosine", "cosine of the final spiking read-out dL/dW_l with BP"),
        "bp_relerr": ("relative error vs BP", "||spiking - BP|| / ||BP||, final read-out"),
        "rate_cos": ("cosine vs rate model", "cosine of the final spiking read-out with the "
                                             "rate model's final read-out"),
        "rate_relerr": ("relative error vs rate", "||spiking - rate|| / ||rate||, final "
                                                  "read-outs"),
        "bp_cos_window": ("BP cosine, last quarter", "recorded BP cosine of the spiking run "
                                                     "averaged over the last quarter of the run"),
    }
    data = {k: (dims, v, {"long_name": attrs[k][0], "description": attrs[k][1]})
            for k, v in out.items()}
    data |= {
        "rate_bp_cos": (("activation", "weight"), rate_cos,
                        {"long_name": "rate model BP cosine",
                         "description": "cosine of the rate model's final read-out with BP"}),
        "rate_bp_relerr": (("activation", "weight"), rate_rel,
                           {"long_name": "rate model rel. error vs BP"}),
        "e_max": (("activation",), e_maxes, {"long_name": "e_max",
                                             "description": "twice the rate run's largest |e|"}),
        "spikes": (("activation", "r_max"), spikes, {"long_name": "spikes of the run"}),
        "wall_time_s": (("activation", "r_max"), wall,
                        {"long_name": "wall time", "units": "s",
                         "description": "spiking run (Brian2 numpy target)"}),
        "rate_wall_time_s": (("activation",), rate_wall,
                             {"long_name": "wall time, rate run", "units": "s"}),
    }
    return xr.Dataset(data, coords={
        "activation": list(activations),
        "r_max": ("r_max", r_maxes, {"long_name": "r_max", "units": "Hz"}),
        "weight": ("weight", np.arange(n_w + 1),
                   {"long_name": "weight matrix W_l", "description": "1 .. L; 0: all together"})},
        attrs={"description": "spiking error neurons vs the rate model (ctpc.studies.spiking."
                              "spiking_limit); read-outs compared at the end of the run",
               "dt": LIMIT_DT, "dt_units": "ms", "tau_e": 1.0, **{f"size_{k}": v for k, v in
                                                                  size.items()}})


def spiking_arrival(small: bool = True, fraction: float = 0.5,
                    reference: str = "bp_adjoint") -> xr.Dataset:
    """Credit arrival time at the input layer against depth L, spiking vs rate error neurons,
    with the fitted power law t_arrival ~ L^p (:func:`ctpc.analysis.arrival_scaling`; spec 5.3:
    p ~ 1 is ballistic, PC-ALM; p ~ 2 diffusive, PC).

    The linear PC-ALM chain of ``sims/propagation.py`` (tau_h = 1/0.24 ms, tau_lambda = 1 ms,
    budget 4L ms) with leaky error neurons (tau_e = 0.5 ms) at dt = 0.1 ms, as a rate run (torch)
    and a spiking run (Brian2, r_max = 10 kHz, e_max from the rate run of each depth).
    ``small``: depths 4, 8, 16, N = B = 4; else 8 .. 64, N = B = 8. Returns a Dataset over
    (errors, network.depth) with ``arrival_time`` (ms), ``arrived``, ``wall_time_s`` and over
    ``errors`` the ``exponent``, ``prefactor``, ``r2`` of the fit.
    """
    size = ARRIVAL_SIZES["small" if small else "full"]
    runs = {"rate": [], "spiking": []}
    walls = {"rate": [], "spiking": []}
    for L in size["depths"]:
        cfg = _base("linear", L, size["width"], size["batch"], ARRIVAL_DT, 4.0 * L,
                    {"tau_h": 1 / 0.24, "tau_lambda": 1.0, "tau_e": ARRIVAL_TAU_E},
                    {"every": 1, "samples": "all", "variables": ["err"]})
        t0 = time.perf_counter()
        rate = simulate(cfg, progress=False)
        walls["rate"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        spk = simulate({**_spiking(cfg, ARRIVAL_R_MAX, _e_max(rate)),
                        "record": {"every": 1, "variables": []}}, progress=False)
        walls["spiking"].append(time.perf_counter() - t0)
        runs["rate"].append(rate.drop_vars(["err"]))
        runs["spiking"].append(spk)
    parts = []
    for kind in ("rate", "spiking"):
        sc = arrival_scaling(runs[kind], fraction, reference, layer=1)
        sc = sc[["arrival_time", "arrived", "exponent", "prefactor", "r2"]]
        sc["wall_time_s"] = ("network.depth", np.asarray(walls[kind]),
                             {"long_name": "wall time", "units": "s"})
        parts.append(sc.expand_dims(errors=[kind]))
    out = xr.concat(parts, dim="errors", combine_attrs="drop_conflicts")
    out.attrs.update({"description": "credit arrival vs depth, spiking vs rate error neurons "
                                     "(ctpc.studies.spiking.spiking_arrival)",
                      "dt": ARRIVAL_DT, "tau_e": ARRIVAL_TAU_E, "r_max_hz": ARRIVAL_R_MAX,
                      "fraction": fraction, "reference": reference})
    return out


__all__ = ["spiking_limit", "spiking_arrival", "credit_arrival"]
