"""Figures for the stability studies, drawn from saved datasets (so sims/ scripts and the
notebooks in analysis/ draw the same pictures from the same files)."""
from __future__ import annotations

import numpy as np
import xarray as xr


def _plt():
    import matplotlib.pyplot as plt  # imported lazily: the simulator itself never plots
    return plt


def stability_map_figure(status: xr.DataArray, predicted: xr.DataArray, title: str = ""):
    """Empirical stable/diverged map over (dt, scheme), one panel per method, with the
    predicted dt_max of each scheme drawn as a black bar over its row.

    ``status``: strings ('ok' / 'diverged' / 'error') with dims (method, scheme, dt);
    ``predicted``: dt_max (ms) with dims (method, scheme)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    methods, schemes = list(status.method.values), list(status.scheme.values)
    dts = status.dt.values
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 0.55 * len(schemes) + 1.8),
                             sharey=True, squeeze=False)
    # geometric cell edges so each dt sits in the middle of its cell on a log axis
    logs = np.log(dts)
    edges = np.exp(np.concatenate([[logs[0] - (logs[1] - logs[0]) / 2],
                                   (logs[1:] + logs[:-1]) / 2,
                                   [logs[-1] + (logs[-1] - logs[-2]) / 2]]))
    code = {"ok": 0, "diverged": 1, "error": 2}
    cmap = ListedColormap(["#9ecae1", "#de2d26", "#bdbdbd"])
    for ax, method in zip(axes[0], methods):
        grid = np.vectorize(lambda s: code.get(str(s), 2))(
            status.sel(method=method).transpose("scheme", "dt").values)
        ax.pcolormesh(edges, np.arange(len(schemes) + 1), grid, cmap=cmap, vmin=0, vmax=2)
        for i, scheme in enumerate(schemes):
            dt_max = float(predicted.sel(method=method, scheme=scheme))
            if np.isfinite(dt_max):
                ax.plot([dt_max, dt_max], [i + 0.1, i + 0.9], color="k", lw=2.5)
        ax.set_xscale("log")
        ax.set_yticks(np.arange(len(schemes)) + 0.5, schemes)
        ax.set_xlabel("dt (ms)")
        ax.set_title(f"{method}: blue stable, red diverged, | predicted dt_max")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def flow_vs_discrete_figure(runs: xr.Dataset, layer: int = 1):
    """Continuous flow at shrinking dt against the paper's discrete algorithm (dt = 1).

    Left: the credit reaching hidden layer ``layer``, relative to its BP adjoint (a magnitude;
    the cosine is scale-free and already ~1 for exponentially small early credit). Right: the
    BP cosine of W_layer and the mean over all W at the end of the budget, against dt.
    ``runs`` has a ``run`` dim with coords ``scheme`` and ``dt`` and one shared ``time`` axis."""
    plt = _plt()
    fig, (ax_t, ax_dt) = plt.subplots(1, 2, figsize=(11, 4))
    is_disc = runs.scheme == "discrete"
    flow, disc = runs.sel(run=~is_disc), runs.sel(run=is_disc)
    rel = runs.credit_norm.sel(layer=layer) / runs.bp_adjoint_norm.sel(layer=layer)
    for r in flow.run.values:
        ax_t.plot(runs.time, rel.sel(run=r), label=f"flow, dt = {float(runs.dt[r]):g} ms")
    for r in disc.run.values:
        ax_t.plot(runs.time, rel.sel(run=r), "k--", label="discrete (paper), dt = 1")
    ax_t.set_xlabel("time (ms)")
    ax_t.set_ylabel(f"credit norm / BP adjoint norm, layer {layer}")
    ax_t.legend(fontsize=8)
    final = flow.bp_cos.isel(time=-1)
    order = np.argsort(flow.dt.values)
    dts = flow.dt.values[order]
    ax_dt.plot(dts, final.sel(weight=layer).values[order], "o-", label=f"W_{layer}")
    ax_dt.plot(dts, final.mean("weight").values[order], "s-", label="mean over W_1..W_L")
    for r in disc.run.values:
        d = disc.sel(run=r).bp_cos.isel(time=-1)
        ax_dt.axhline(float(d.sel(weight=layer)), color="C0", ls="--", lw=1)
        ax_dt.axhline(float(d.mean("weight")), color="C1", ls="--", lw=1,
                      label="discrete algorithm (dashed)")
    ax_dt.set_xscale("log")
    ax_dt.set_xlabel("dt (ms)")
    ax_dt.set_ylabel("cosine to BP at the end of the budget")
    ax_dt.legend(fontsize=8)
    fig.tight_layout()
    return fig
