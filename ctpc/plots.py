"""Figures of the propagation studies, shared by ``sims/propagation.py`` and the notebooks so a
notebook reproduces exactly the saved PNGs. Each function draws on a matplotlib Axes (a new
one if none is given) and returns it; nothing here computes physics, only draws
:mod:`ctpc.analysis` results and saved runs.
"""
from __future__ import annotations

import numpy as np
import xarray as xr


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots()
    return ax


def plot_arrival_scaling(results: dict[str, xr.Dataset], ax=None, *, guides=(1, 2)):
    """Arrival time against depth, log-log, one series per :func:`arrival_scaling` result,
    with the fitted power law in the legend and dashed guide slopes."""
    ax = _axes(ax)
    all_L, all_t = [], []
    for label, res in results.items():
        dim = res.attrs["depth_dim"]
        L = res[dim].values.astype(float)
        t = res["arrival_time"].values
        arrived = res["arrived"].values
        p = float(res["exponent"])
        text = f"{label}: p = {p:.2f}" if np.isfinite(p) else \
            f"{label}: never arrives at L = {L[~arrived].astype(int).tolist()}"
        line, = ax.plot(L[arrived], t[arrived], "o", label=text)
        if np.isfinite(p):
            grid = np.geomspace(L.min(), L.max(), 50)
            ax.plot(grid, float(res["prefactor"]) * grid ** p, "-", color=line.get_color(),
                    lw=1)
        all_L.extend(L[arrived])
        all_t.extend(t[arrived])
    if all_L:
        L0, t0 = min(all_L), float(np.nanmedian(all_t))
        grid = np.geomspace(min(all_L), max(all_L), 50)
        for g in guides:
            ax.plot(grid, t0 * (grid / L0) ** g, "k:", lw=0.8, alpha=0.6)
            ax.annotate(rf"$\propto L^{g}$", (grid[-1], t0 * (grid[-1] / L0) ** g),
                        fontsize=8, alpha=0.7)
    ax.set(xscale="log", yscale="log", xlabel="depth L (weight matrices)",
           ylabel="arrival time at layer 1 (ms)")
    ax.legend(fontsize=8)
    return ax


def plot_credit_heatmap(ds: xr.Dataset, ax=None, *, t_max: float | None = None,
                        log_time: bool = False, vmin: float = -4.0, vmax: float = 0.5,
                        title: str | None = None):
    """log10(credit_norm / BP adjoint norm) over (time, layer) for one run: 0 means the layer's
    credit has its BP size. The output side (error enters) is at the top. ``log_time`` shows
    a long (diffusive) run on a log time axis, from the first record after t = 0."""
    import matplotlib.pyplot as plt
    ax = _axes(ax)
    rel = ds["credit_norm"] / ds["bp_adjoint_norm"]
    if t_max is not None:
        rel = rel.sel(time=slice(None, t_max))
    if log_time:
        rel = rel.sel(time=rel["time"] > 0)
    with np.errstate(divide="ignore"):
        z = np.log10(rel.transpose("layer", "time").values)
    t = rel["time"].values
    mesh = ax.pcolormesh(t, rel["layer"].values, np.clip(z, vmin, vmax),
                         vmin=vmin, vmax=vmax, shading="nearest", cmap="viridis")
    plt.colorbar(mesh, ax=ax, label="log10(credit / BP adjoint)")
    if log_time:
        ax.set_xscale("log")
    ax.set_xlim(t[0], t[-1])
    ax.set(xlabel="time (ms)", ylabel="hidden layer l (1 = input side)",
           title=title or f"{ds.attrs.get('method', '')} L = {ds.sizes['layer'] + 1}")
    return ax


def plot_credit_distribution(results: dict[str, xr.Dataset], ax=None):
    """credit_l / BP adjoint_l per layer (log), one line per :func:`credit_distribution`."""
    ax = _axes(ax)
    for label, d in results.items():
        r = d["ratio_to_bp"]
        ax.plot(r["layer"].values, r.values, label=f"{label} (t = {float(d.evaluated_at):g} ms)")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="hidden layer l (1 = input side)",
           ylabel="credit / BP adjoint norm")
    ax.legend(fontsize=8)
    return ax
