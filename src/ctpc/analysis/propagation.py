"""How credit travels through depth (spec section 5.3): arrival times, wavefront speed, the
depth-scaling exponent, and how the credit is spread over the layers.

Credit of hidden layer l is ``credit_norm.sel(layer=l)``: the RMS over the batch of
``||rho e_l + lambda_l||``. Layer 1 is the input side, layer L-1 the output side where the
error enters. Credit *arrives* at a layer when its norm first reaches ``fraction x reference``
(see :mod:`ctpc.analysis.crossing` for the exact definition and interpolation), where the
reference is either

* ``"final"``: the layer's own norm at the end of the run (the last finite record), or
* ``"bp_adjoint"``: the BP adjoint norm of the layer at the feed-forward point. PC-ALM's
  multipliers converge to minus the BP adjoint, so this is "credit reaches its BP value" and,
  unlike "final", it does not depend on the run length. PC's credit is biased and may never
  reach it: that is reported (``arrived = False``, time NaN), not hidden.

"final" measures the wave only if the run is long enough for the norm to have settled;
``reference_drift`` says how much it still moved over the last quarter of the run.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import xarray as xr

from ctpc.analysis.common import (check_fraction, check_reference, param, require, top_layer,
    valid_layers, with_units)
from ctpc.analysis.crossing import crossing_time, last_finite

DEPTH_DIM = "network.depth"     # the sweep dimension of network depth


def _reference(ds: xr.Dataset, series: xr.DataArray, reference: str) -> xr.DataArray:
    return last_finite(series) if reference == "final" else ds["bp_adjoint_norm"]


def _budget(series: xr.DataArray) -> xr.DataArray:
    """Last time with a finite record: the run's budget (or where a diverged run stopped)."""
    return series["time"].where(np.isfinite(series)).max("time")


def credit_arrival(ds: xr.Dataset, fraction: float = 0.5, reference: str = "final", *,
                   variable: str = "credit_norm", interpolate: bool = True) -> xr.Dataset:
    """Per layer: first time the credit norm reaches ``fraction x reference``.

    Returns a Dataset over ``layer`` (and any sweep dims): ``arrival_time`` (ms, NaN when never
    reached within the run), ``arrival_step`` (in units of dt), ``arrived`` (bool),
    ``reference_norm``, ``level``, ``budget`` (ms), and for ``reference="final"`` the settling
    diagnostic ``reference_drift`` (max relative change over the last quarter of the run).
    """
    check_fraction(fraction)
    check_reference(reference)
    require(ds, variable, "bp_adjoint_norm")
    series = ds[variable]
    ref = _reference(ds, series, reference)
    level = fraction * ref
    t = crossing_time(series, level, interpolate=interpolate)
    valid = valid_layers(ds, series)
    budget = _budget(series)
    out = xr.Dataset({
        "arrival_time": with_units(t, "ms", "arrival time",
                                   f"first time {variable} >= {fraction:g} x {reference}"),
        "arrival_step": with_units(t / param(ds, "dt"), "1", "arrival step",
                                   "arrival time in integration steps"),
        "arrived": with_units(t.notnull() & valid, "1", "arrived", "credit arrived within the run"),
        "reference_norm": with_units(ref, "1", "reference norm", f"reference norm ({reference})"),
        "level": with_units(level, "1", "threshold level", "threshold = fraction x reference"),
        "budget": with_units(budget, "ms", "budget", "last recorded time of the run"),
    })
    if reference == "final":
        tail = series.where(series["time"] >= 0.75 * budget)
        drift = (abs(tail - ref) / ref).max("time")
        out["reference_drift"] = with_units(
            drift, "1", "reference drift",
            "max |norm - final| / final over the last quarter of the run")
    if "layer_mask" in ds.variables:
        out["layer_mask"] = ds["layer_mask"]
    if "status" in ds.variables:
        out["status"] = ds["status"]
    out.attrs = {"fraction": fraction, "reference": reference, "variable": variable,
                 "interpolate": int(interpolate),
                 "description": "credit arrival per layer (ctpc.analysis.credit_arrival)"}
    if "status" in ds.attrs:
        out.attrs["status"] = ds.attrs["status"]
    return out


# ------------------------------------------------------------------------- wavefront speed
def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, int]:
    """Least-squares y = a + b x over finite pairs -> (a, b, r2, n)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 2 or np.ptp(x) == 0:
        return np.nan, np.nan, np.nan, n
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    ss = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(resid ** 2) / ss if ss > 0 else 1.0
    return float(a), float(b), float(r2), n


def wavefront_speed(ds: xr.Dataset, fraction: float = 0.2, reference: str = "final", *,
                    layers: Sequence[int] | None = None, min_layers: int = 3) -> xr.Dataset:
    """Speed of the credit front in layers per ms, from one run's per-layer arrival times.

    Fits ``arrival_time = delay + (H - l) / speed`` over the layers that arrived (H = top hidden
    layer, where the error enters). The default fraction is 0.2, not 0.5: a damped wave loses
    amplitude as it travels and is reflected at the input, so the half-value crossing of the
    middle layers comes from the reflection (non-monotone in l), while low thresholds track the
    front. ``speed_theory`` is the continuum prediction 1/sqrt(tau_h tau_lambda) (spec 5.3;
    NaN for PC, whose credit diffuses and has no speed).
    """
    arr = credit_arrival(ds, fraction, reference)
    t = arr["arrival_time"].where(arr["arrived"])
    if layers is not None:
        t = t.where(t["layer"].isin(list(layers)))
    distance = top_layer(valid_layers(ds, ds["credit_norm"])) - t["layer"]

    def fit(d, y):
        a, b, r2, n = _line_fit(d, y)
        if n < min_layers or not b > 0:
            return np.nan, np.nan, np.nan, n
        return 1.0 / b, a, r2, n

    speed, delay, r2, n = xr.apply_ufunc(
        fit, distance, t, input_core_dims=[["layer"], ["layer"]],
        output_core_dims=[[], [], [], []], vectorize=True,
        output_dtypes=[float, float, float, int])
    theory = 1.0 / np.sqrt(param(ds, "tau_h") * param(ds, "tau_lambda"))
    theory = xr.DataArray(theory) if not isinstance(theory, xr.DataArray) else theory
    theory = theory.where(theory > 0)          # tau_lambda = inf (PC): no wave, no speed
    out = xr.Dataset({
        "speed": with_units(speed, "layers/ms", "wavefront speed", "credit wavefront speed"),
        "speed_theory": with_units(theory, "layers/ms",
                                   "predicted speed",
                                   "continuum prediction 1/sqrt(tau_h tau_lambda)"),
        "delay": with_units(delay, "ms", "front delay",
                            "intercept of the fit (front leaves the top layer)"),
        "r2": with_units(r2, "1", "r² of the fit",
                         "coefficient of determination of the linear fit"),
        "n_layers": with_units(n, "1", "layers in the fit", "layers used in the fit"),
    })
    out.attrs = {"fraction": fraction, "reference": reference,
                 "description": "wavefront speed (ctpc.analysis.wavefront_speed)"}
    return out


# ------------------------------------------------------------------- depth scaling exponent
class PowerLaw(NamedTuple):
    p: float            # exponent
    prefactor: float    # c in y = c x^p
    r2: float           # of the log-log fit
    n: int              # points used


def fit_power_law(x, y) -> PowerLaw:
    """Least-squares fit of ``y = prefactor * x**p`` in log-log over finite positive pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    a, b, r2, n = _line_fit(np.log(x[ok]), np.log(y[ok]))
    return PowerLaw(b, float(np.exp(a)), r2, n)


def arrival_scaling(runs, fraction: float = 0.5, reference: str = "bp_adjoint", *,
                    layer: int = 1, depth_dim: str = DEPTH_DIM,
                    interpolate: bool = True) -> xr.Dataset:
    """Arrival time of credit at ``layer`` (default: the input layer) across depths, and the
    fitted power law ``t_arrival = prefactor * L**exponent`` (spec 5.3: ~1 for PC-ALM, ~2 for PC).

    ``runs``: a sweep dataset with a ``network.depth`` dimension (other sweep dims, e.g.
    ``dynamics.method``, are kept), or a sequence of single runs of different depth. The
    exponent is fitted only when credit arrived at every depth; otherwise it is NaN and
    ``arrived`` shows where it never came within the run (``all_arrived`` False). Also returns
    ``speed_from_depths``: 1 / slope of arrival time against L, in layers per ms.
    """
    if isinstance(runs, xr.Dataset):
        if depth_dim not in runs.dims:
            raise ValueError(f"arrival_scaling: the dataset has no {depth_dim!r} dimension "
                             f"(dims: {list(runs.dims)}); pass a sweep over {depth_dim} or a "
                             "list of runs")
        arr = credit_arrival(runs, fraction, reference, interpolate=interpolate).sel(layer=layer)
    else:
        parts = [credit_arrival(r, fraction, reference, interpolate=interpolate).sel(layer=layer)
                 for r in runs]
        arr = xr.concat(_stack_runs_arrivals(runs, parts, depth_dim), dim=depth_dim,
                        combine_attrs="drop_conflicts")
    arr = arr.sortby(depth_dim)
    depth = arr[depth_dim].astype(float)
    t = arr["arrival_time"]

    def fit(L, tt, ok):
        both = np.isfinite(L)
        if not ok[both].all():
            return np.nan, np.nan, np.nan, np.nan
        law = fit_power_law(L, tt)
        _, slope, _, _ = _line_fit(L, tt)
        return law.p, law.prefactor, law.r2, (1.0 / slope if slope > 0 else np.nan)

    p, c, r2, speed = xr.apply_ufunc(
        fit, depth, t, arr["arrived"],
        input_core_dims=[[depth_dim]] * 3, output_core_dims=[[], [], [], []],
        vectorize=True, output_dtypes=[float] * 4)
    out = arr[["arrival_time", "arrival_step", "arrived", "budget"]].copy()
    out["exponent"] = with_units(p, "1", "exponent p", "p in t_arrival = prefactor * L^p")
    out["prefactor"] = with_units(c, "ms", "prefactor",
                                  "prefactor of the power law (time at L = 1)")
    out["r2"] = with_units(r2, "1", "r² of the log-log fit",
                           "coefficient of determination of the log-log fit")
    out["speed_from_depths"] = with_units(speed, "layers/ms",
                                          "speed from depths",
                                          "1 / slope of arrival time against depth L")
    out["all_arrived"] = with_units(arr["arrived"].all(depth_dim), "1",
                                    "arrived at every depth",
                                    "credit arrived at every depth")
    out.attrs = {"fraction": fraction, "reference": reference, "layer": layer,
                 "depth_dim": depth_dim,
                 "description": "arrival-time scaling with depth (ctpc.analysis.arrival_scaling)"}
    return out


def _stack_runs_arrivals(runs, parts, depth_dim):
    depths = [int(r.attrs["depth"]) for r in runs]
    if len(set(depths)) != len(depths):
        raise ValueError(f"arrival_scaling: runs must have distinct depths, got {depths}")
    return [p.drop_vars("layer").expand_dims({depth_dim: [d]}) for p, d in zip(parts, depths)]


# ------------------------------------------------------------------ credit distribution
def credit_distribution(ds: xr.Dataset, time: float | None = None, *,
                        variable: str = "credit_norm") -> xr.Dataset:
    """How the credit norm is spread over the layers at the end of the run (or at the last
    record at or before ``time`` ms), compared with BP's adjoint norms.

    Per layer: ``share`` (credit_l / sum over layers), ``bp_share`` (same for the BP adjoint),
    ``ratio_to_bp`` (credit_l / adjoint_l; 1 everywhere at PC-ALM's fixed point). Summaries:
    ``evenness`` and ``bp_evenness`` (normalised entropy of the shares: 1 = uniform over the
    layers, 0 = all in one layer), ``total_variation`` (half the L1 distance between the
    shares: 0 = spread like BP, 1 = disjoint), ``first_to_last`` (credit of layer 1 over the top
    layer's; spec 5.3 quotes it for PC) and its BP counterpart ``bp_first_to_last``,
    ``min_ratio_to_bp``.
    """
    require(ds, variable, "bp_adjoint_norm")
    series = ds[variable]
    if time is not None:
        series = series.where(series["time"] <= time)
    valid = valid_layers(ds, ds[variable])
    c = last_finite(series).where(valid)
    adj = ds["bp_adjoint_norm"].where(valid)
    n = valid.sum("layer")

    def shares(v):
        return v / v.sum("layer")

    def evenness(s):
        ent = -(s * np.log(s.where(s > 0))).sum("layer")
        return xr.where(n > 1, ent / np.log(n.where(n > 1)), np.nan)

    s, bs = shares(c), shares(adj)
    first = lambda v: v.sel(layer=1)
    top = lambda v: last_finite(v, dim="layer")
    out = xr.Dataset({
        "credit": with_units(c, "1", "credit norm", f"{variable} at the evaluation time"),
        "bp_adjoint_norm": with_units(adj, "1", "BP adjoint norm",
                                      "BP adjoint norm at the feed-forward point"),
        "share": with_units(s, "1", "credit share", "credit_l / sum_l credit_l"),
        "bp_share": with_units(bs, "1", "BP share", "adjoint_l / sum_l adjoint_l"),
        "ratio_to_bp": with_units(c / adj, "1", "credit / BP adjoint", "credit_l / BP adjoint_l"),
        "evenness": with_units(evenness(s), "1", "evenness",
                               "normalised entropy of the credit shares"),
        "bp_evenness": with_units(evenness(bs), "1", "BP evenness",
                                  "normalised entropy of the BP shares"),
        "total_variation": with_units(0.5 * abs(s - bs).sum("layer"), "1",
                                      "total variation",
                                      "half L1 distance between credit and BP shares"),
        "first_to_last": with_units(first(c) / top(c), "1",
                                    "first / last credit",
                                    "credit of layer 1 / credit of the top hidden layer"),
        "bp_first_to_last": with_units(first(adj) / top(adj), "1",
                                       "first / last BP adjoint",
                                       "BP adjoint of layer 1 / of the top hidden layer"),
        "min_ratio_to_bp": with_units((c / adj).min("layer"), "1",
                                      "min credit / BP adjoint",
                                      "smallest credit_l / adjoint_l over the layers"),
        "evaluated_at": with_units(_budget(series).max("layer"), "ms",
                                   "evaluation time",
                                   "time of the evaluated records (end of the run or `time`)"),
    })
    out.attrs = {"variable": variable,
                 "description": "credit distribution over layers (ctpc.analysis.credit_distribution)"}
    return out
