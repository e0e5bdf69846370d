"""Threshold crossings of recorded series, the primitive every arrival/alignment measure uses.

Definition (used throughout ``ctpc.analysis``): a series *reaches* a level at the first recorded
time whose value is >= the level. With ``interpolate=True`` (the default) the time is refined by
linear interpolation between that record and the previous one, so the answer does not jump by a
whole record interval when ``record.every`` > 1; with ``record.every = 1`` the two differ by less
than one step. Non-finite entries (padding in a sweep, steps after a divergence) are skipped, so
interpolation runs between consecutive *finite* records.
"""
from __future__ import annotations

import numpy as np
import xarray as xr


def _finite(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(y) & np.isfinite(t)
    return t[ok], y[ok]


def _interp(t0, y0, t1, y1, level) -> float:
    if y1 == y0:
        return float(t1)
    return float(t0 + (level - y0) / (y1 - y0) * (t1 - t0))


def first_crossing(t: np.ndarray, y: np.ndarray, level: float, interpolate: bool = True) -> float:
    """First time ``y >= level`` (1-D arrays); NaN when never reached or level is not finite."""
    t, y = _finite(np.asarray(t, float), np.asarray(y, float))
    if not np.isfinite(level) or y.size == 0:
        return np.nan
    hit = np.flatnonzero(y >= level)
    if hit.size == 0:
        return np.nan
    i = hit[0]
    if i == 0 or not interpolate:
        return float(t[i])
    return _interp(t[i - 1], y[i - 1], t[i], y[i], level)


def settle_crossing(t: np.ndarray, y: np.ndarray, level: float, interpolate: bool = True) -> float:
    """Time from which ``y >= level`` holds until the end of the record; NaN if it ends below."""
    t, y = _finite(np.asarray(t, float), np.asarray(y, float))
    if not np.isfinite(level) or y.size == 0 or y[-1] < level:
        return np.nan
    below = np.flatnonzero(y < level)
    if below.size == 0:
        return float(t[0])
    i = below[-1] + 1                      # first record of the final stretch above the level
    if not interpolate:
        return float(t[i])
    return _interp(t[i - 1], y[i - 1], t[i], y[i], level)


def last_finite(da: xr.DataArray, dim: str = "time") -> xr.DataArray:
    """Value at the last finite record along ``dim`` (NaN if none): the end of a run's budget,
    or the last bounded state of a diverged run, also inside a NaN-padded sweep."""
    def last(a):
        ok = np.isfinite(a)
        idx = a.shape[-1] - 1 - np.argmax(ok[..., ::-1], axis=-1)
        out = np.take_along_axis(a, idx[..., None], axis=-1)[..., 0]
        return np.where(ok.any(axis=-1), out, np.nan)
    return xr.apply_ufunc(last, da, input_core_dims=[[dim]])


def crossing_time(da: xr.DataArray, level, *, settle: bool = False,
                  interpolate: bool = True) -> xr.DataArray:
    """Vectorised :func:`first_crossing` (or :func:`settle_crossing`) along ``time`` of ``da``;
    ``level`` broadcasts against the other dims (e.g. one level per layer)."""
    fn = settle_crossing if settle else first_crossing
    return xr.apply_ufunc(
        fn, da["time"], da, level,
        input_core_dims=[["time"], ["time"], []],
        kwargs={"interpolate": interpolate}, vectorize=True, output_dtypes=[float])
