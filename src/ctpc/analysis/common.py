"""Helpers shared by the analysis functions: run parameters and argument checks.

Every analysis function accepts a single run (``ctpc.simulate`` / ``ctpc.open_results``) or a
combined sweep (``ctpc.sweep``). A single run keeps ``dt``, ``tau_h``... in its attributes; a
sweep keeps them as variables over its sweep dimensions. :func:`param` reads either, so results
broadcast over the sweep dimensions automatically.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ctpc.common.labels import var_attrs

REFERENCES = ("final", "bp_adjoint")


def param(ds: xr.Dataset, name: str):
    """Run parameter ``name`` (e.g. ``dt``): a sweep variable if present, else the attribute."""
    if name in ds.variables:
        return ds[name]
    if name in ds.attrs:
        return float(ds.attrs[name])
    raise KeyError(f"the dataset has neither a variable nor an attribute {name!r}; "
                   "is it a ctpc run or sweep (ctpc.open_results)?")


def check_fraction(fraction: float, what: str = "fraction") -> None:
    if not 0 < fraction <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {fraction!r}")


def check_reference(reference: str) -> None:
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}: 'final' is "
                         "the layer's own value at the end of the run, 'bp_adjoint' the BP "
                         "adjoint norm at the feed-forward point (what PC-ALM converges to)")


def require(ds: xr.Dataset, *names: str) -> None:
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise KeyError(f"the dataset lacks {missing}; expected a ctpc run or sweep with the "
                       "per-layer series of docs/guide/dataset.md")


def with_units(da: xr.DataArray, units: str, long_name: str,
               description: str | None = None) -> xr.DataArray:
    """``da`` with a short ``long_name`` (its axis label), ``units`` unless dimensionless
    ("1": none) and the sentence in ``description`` (``ctpc.common.labels``)."""
    da = da.copy()
    da.attrs = var_attrs(long_name, units, description)
    return da


def valid_layers(ds: xr.Dataset, series: xr.DataArray) -> xr.DataArray:
    """True for layers the run has (a sweep pads shallow runs along ``layer``)."""
    if "layer_mask" in ds.variables:
        return ds["layer_mask"].astype(bool)
    return np.isfinite(series).any("time")


def top_layer(valid: xr.DataArray) -> xr.DataArray:
    """Highest existing hidden layer H = L - 1 (per sweep cell)."""
    return valid["layer"].where(valid).max("layer")
