"""Figures for the stability and propagation studies, drawn from saved datasets and
``ctpc.analysis`` results (so sims/ scripts and the notebooks in analysis/ draw the same
pictures from the same files). Nothing here computes physics."""
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
            status.sel({"method": method}).transpose("scheme", "dt").values)
        ax.pcolormesh(edges, np.arange(len(schemes) + 1), grid, cmap=cmap, vmin=0, vmax=2)
        for i, scheme in enumerate(schemes):
            dt_max = float(predicted.sel({"method": method, "scheme": scheme}))
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


# ------------------------------------------------------------------ propagation studies
# Axes-level: each draws on the given Axes (a new one if None) and returns it.
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
