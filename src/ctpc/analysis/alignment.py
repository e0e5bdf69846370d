"""Alignment of the weight-update read-out with BP over time, per weight matrix W_l.

``bp_cos`` [time, weight] is the cosine between ctpc's local read-out dL/dW_l and the exact BP
gradient. A layer is *aligned* from the first time its cosine reaches the threshold; it has
*settled* from the time it stays at or above the threshold until the end of the run (spec 6:
per-layer cosine is the safer metric, a whole-network cosine is dominated by the output).
"""
from __future__ import annotations

import xarray as xr

from ctpc.analysis.common import check_fraction, param, require, with_units
from ctpc.analysis.crossing import crossing_time, last_finite


def alignment_times(ds: xr.Dataset, threshold: float = 0.99, *,
                    interpolate: bool = True) -> xr.Dataset:
    """Per weight matrix: ``reach_time`` (first time bp_cos >= threshold, ms; NaN if never),
    ``settle_time`` (from when it stays there; NaN if the run ends below), ``reached``,
    ``final_cos``, ``final_relerr`` (at the last finite record) and ``best_cos``."""
    check_fraction(threshold, "threshold")
    require(ds, "bp_cos", "bp_relerr")
    cos = ds["bp_cos"]
    reach = crossing_time(cos, threshold, interpolate=interpolate)
    settle = crossing_time(cos, threshold, settle=True, interpolate=interpolate)
    dt = param(ds, "dt")
    out = xr.Dataset({
        "reach_time": with_units(reach, "ms", "reach time",
                                 f"first time bp_cos >= {threshold:g}"),
        "reach_step": with_units(reach / dt, "1", "reach step", "reach time in integration steps"),
        "settle_time": with_units(settle, "ms", "settle time",
                                  f"time from which bp_cos stays >= {threshold:g}"),
        "reached": with_units(reach.notnull(), "1", "reached", "bp_cos reached the threshold"),
        "final_cos": with_units(last_finite(cos), "1", "final BP cosine",
                                "bp_cos at the end of the run"),
        "final_relerr": with_units(last_finite(ds["bp_relerr"]), "1", "final relative error",
                                   "bp_relerr at the end of the run"),
        "best_cos": with_units(cos.max("time"), "1", "best BP cosine",
                               "highest bp_cos during the run"),
    })
    if "weight_mask" in ds.variables:
        out["weight_mask"] = ds["weight_mask"]
    out.attrs = {"threshold": threshold,
                 "description": "BP alignment per weight matrix (ctpc.analysis.alignment_times)"}
    return out
