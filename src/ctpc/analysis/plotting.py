"""Figures for the stability, propagation and training-grid studies, drawn from saved
datasets and ``ctpc.analysis`` results (so sims/ scripts and the notebooks in analysis/ draw
the same pictures from the same files). Nothing here computes physics."""
from __future__ import annotations

import numpy as np
import xarray as xr


def _plt():
    import matplotlib.pyplot as plt  # imported lazily: the simulator itself never plots
    return plt


def log_ticks(ax, which: str = "x", values=None) -> None:
    """Readable ticks on a log axis: at ``values`` (the data's own, e.g. the depths or dts of a
    study) when given, else at 1-2-5 (or 1-2-3-5, or every integer multiple) per decade when the
    axis spans at most 3 decades, or at evenly spaced round numbers when it spans less than
    about a factor 2, so it never shows a single labelled tick. Labels are plain
    numbers (0.5, 2, 64), not 5×10⁻¹; over more decades matplotlib's powers of ten stay."""
    from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, MaxNLocator,
                                   NullFormatter)

    axis = ax.xaxis if which == "x" else ax.yaxis
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    if values is not None:
        values = np.unique(np.asarray(values, dtype=float))
        values = values[np.isfinite(values) & (values > 0)]
        if 2 <= values.size <= 12:
            axis.set_major_locator(FixedLocator(values))
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())
            return
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    if not (lo > 0 and np.isfinite(hi)) or np.log10(hi / lo) > 3:
        return
    locator = None
    for subs in ((1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), tuple(float(k) for k in range(1, 10))):
        ticks = LogLocator(10, subs=subs).tick_values(lo, hi)
        if ((ticks >= lo) & (ticks <= hi)).sum() >= 3:
            locator = LogLocator(10, subs=subs)
            break
    # less than a factor ~2 (e.g. 0.98 .. 1.5): evenly spaced round numbers, as on a linear axis
    axis.set_major_locator(locator or MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(NullFormatter())


def legend_outside(ax, where: str = "below", **kw):
    """The legend of ``ax`` outside its data: under the axes (``below``, in columns) or to its
    right (``right``). With constrained layout or ``bbox_inches="tight"`` nothing is cut."""
    kw.setdefault("fontsize", 8)
    if where == "right":
        return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **kw)
    n = len(ax.get_legend_handles_labels()[1])
    kw.setdefault("ncol", 2 if n > 2 else max(1, n))
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), borderaxespad=0, **kw)


def stability_map_figure(status: xr.DataArray, predicted: xr.DataArray, title: str = ""):
    """Empirical stable/diverged map over (dt, scheme), one panel per method, with the
    predicted dt_max of each scheme drawn as a black bar over its row.

    ``status``: strings ('ok' / 'diverged' / 'error') with dims (method, scheme, dt);
    ``predicted``: dt_max (ms) with dims (method, scheme)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    methods, schemes = list(status.method.values), list(status.scheme.values)
    dts = status.dt.values
    fig, axes = plt.subplots(1, len(methods), sharey=True, squeeze=False, layout="constrained",
                             figsize=(5.5 * len(methods), 0.55 * len(schemes) + 2.2))
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
        ax.set_xlim(edges[0], edges[-1])
        log_ticks(ax, "x")
        ax.set_yticks(np.arange(len(schemes)) + 0.5, schemes)
        ax.set_xlabel("dt (ms)")
        ax.set_title(METHOD_LABELS.get(str(method), str(method)))
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color=cmap(0), label="stable"), Patch(color=cmap(1), label="diverged"),
               Patch(color=cmap(2), label="error"),
               Line2D([], [], color="k", lw=2.5, label="predicted dt_max")]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def flow_vs_discrete_figure(runs: xr.Dataset, layer: int = 1):
    """Continuous flow at shrinking dt against the paper's discrete algorithm (dt = 1).

    Left: the credit reaching hidden layer ``layer``, relative to its BP adjoint (a magnitude;
    the cosine is scale-free and already ~1 for exponentially small early credit). Right: the
    BP cosine of W_layer and the mean over all W at the end of the budget, against dt.
    ``runs`` has a ``run`` dim with coords ``scheme`` and ``dt`` and one shared ``time`` axis."""
    plt = _plt()
    fig, (ax_t, ax_dt) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    is_disc = runs.scheme == "discrete"
    flow, disc = runs.sel(run=~is_disc), runs.sel(run=is_disc)
    rel = runs.credit_norm.sel(layer=layer) / runs.bp_adjoint_norm.sel(layer=layer)
    for r in flow.run.values:
        ax_t.plot(runs.time, rel.sel(run=r), label=f"flow, dt = {float(runs.dt[r]):g} ms")
    for r in disc.run.values:
        ax_t.plot(runs.time, rel.sel(run=r), "k--", label="discrete (paper), dt = 1")
    ax_t.set_xlabel("time (ms)")
    ax_t.set_ylabel(f"credit / BP adjoint norm, layer {layer}")
    legend_outside(ax_t)
    final = flow.bp_cos.isel(time=-1)
    order = np.argsort(flow.dt.values)
    dts = flow.dt.values[order]
    ax_dt.plot(dts, final.sel(weight=layer).values[order], "o-", color="C0",
               label=f"flow, W_{layer}")
    ax_dt.plot(dts, final.mean("weight").values[order], "s-", color="C1",
               label="flow, mean over W_1..W_L")
    for r in disc.run.values:
        d = disc.sel(run=r).bp_cos.isel(time=-1)
        ax_dt.axhline(float(d.sel(weight=layer)), color="C0", ls="--", lw=1,
                      label=f"discrete, W_{layer}")
        ax_dt.axhline(float(d.mean("weight")), color="C1", ls="--", lw=1,
                      label="discrete, mean over W")
    ax_dt.set_xscale("log")
    log_ticks(ax_dt, "x", dts)
    ax_dt.set_xlabel("dt (ms)")
    ax_dt.set_ylabel("BP cosine at the end of the budget")
    legend_outside(ax_dt)
    return fig


# ------------------------------------------------------------------ propagation studies
# Axes-level: each draws on the given Axes (a new one if None) and returns it. Their legends
# sit under the axes (legend_outside): save with bbox_inches="tight" or use constrained layout.
def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(layout="constrained")
    return ax


def plot_arrival_scaling(results: dict[str, xr.Dataset], ax=None, *, guides=(1, 2)):
    """Arrival time against depth, log-log, one series per :func:`arrival_scaling` result,
    with the fitted power law in the legend and guide slopes (grey, in the legend too); ticks
    at the depths run."""
    ax = _axes(ax)
    all_L, all_t = [], []
    for label, scaling in results.items():
        dim = scaling.attrs["depth_dim"]
        L = scaling[dim].values.astype(float)
        t = scaling["arrival_time"].values
        arrived = scaling["arrived"].values
        p = float(scaling["exponent"])
        text = f"{label}: p = {p:.2f}" if np.isfinite(p) else \
            f"{label}: never arrives at L = {L[~arrived].astype(int).tolist()}"
        line, = ax.plot(L[arrived], t[arrived], "o", label=text)
        if np.isfinite(p):
            grid = np.geomspace(L.min(), L.max(), 50)
            ax.plot(grid, float(scaling["prefactor"]) * grid ** p, "-", color=line.get_color(),
                    lw=1)
        all_L.extend(L[arrived])
        all_t.extend(t[arrived])
    if all_L:
        L0, t0 = min(all_L), float(np.nanmedian(all_t))
        grid = np.geomspace(min(all_L), max(all_L), 50)
        for g, style in zip(guides, (":", "-.", "--", (0, (1, 3)))):
            ax.plot(grid, t0 * (grid / L0) ** g, color="0.45", ls=style, lw=1,
                    label=rf"guide $\propto L^{{{g}}}$")
    ax.set(xscale="log", yscale="log", xlabel="depth L (weight matrices)",
           ylabel="arrival time at layer 1 (ms)")
    log_ticks(ax, "x", all_L)
    log_ticks(ax, "y")
    legend_outside(ax, ncol=1)
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
    ax.set_xlim(t[0], t[-1])
    if log_time:
        ax.set_xscale("log")
        log_ticks(ax, "x")
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
    log_ticks(ax, "y")
    legend_outside(ax, ncol=1)
    return ax


# ------------------------------------------------------------------ training grids
# A training grid is a training sweep (``python -m ctpc.sweep`` on a config with a ``training:``
# section, or ``sims/grid.py``) whose dimensions are these config keys. A dimension the dataset
# lacks is added with length 1, so a grid of one activation or one seed draws the same way.
METHOD, WIDTH, DEPTH, ACT, SEED = ("dynamics.method", "network.width", "network.depth",
                                   "network.activation", "seed")
GRID_DIMS = (METHOD, WIDTH, DEPTH, ACT, SEED)
METHOD_LABELS = {"bp": "BP", "pc": "PC", "pcalm": "PC-ALM"}
METHOD_COLORS = {"bp": "k", "pc": "C3", "pcalm": "C0"}


def as_grid(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every one of GRID_DIMS as a dimension (a missing one gets length 1: its
    scalar coordinate's value if there is one, else '')."""
    for d in GRID_DIMS:
        if d not in ds.dims:
            ds = ds.expand_dims(d) if d in ds.coords else ds.expand_dims({d: [""]})
    return ds


def ok_cells(ds: xr.Dataset, name: str) -> xr.DataArray:
    """Variable ``name`` of a grid, NaN where a cell's ``status`` is not 'ok' (diverged,
    crashed or never run)."""
    ds = as_grid(ds)
    da = ds[name]
    return da.where(ds["status"] == "ok") if "status" in ds else da


def last_evaluation(ds: xr.Dataset, name: str) -> xr.DataArray:
    """Variable ``name`` (with an ``eval`` dim) at each cell's last evaluation (``eval_mask``
    says which evaluations are real; cells of one sweep share the schedule but a diverged cell
    stops early), NaN where the cell is not ok."""
    ds = as_grid(ds)
    da = ok_cells(ds, name)
    pos = xr.DataArray(np.arange(ds.sizes["eval"]), dims="eval")
    if "eval_mask" in ds:
        last = pos.where(ds["eval_mask"]).max("eval")
    else:
        last = xr.full_like(pos.max(), ds.sizes["eval"] - 1)
    return da.where(pos == last).sum("eval", min_count=1)


def _methods(ds: xr.Dataset) -> list[str]:
    present = [str(m) for m in ds[METHOD].values]
    return [m for m in METHOD_LABELS if m in present] + \
        [m for m in present if m not in METHOD_LABELS]


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _heatmap(ax, z: xr.DataArray, cmap, vmin: float, vmax: float, text) -> object:
    """z [width, depth] as coloured cells, each annotated with ``text(i, j)`` (NaN: grey, —).
    Widths grow upwards, depths to the right; both axes are categorical."""
    from matplotlib import colormaps
    z = z.transpose(WIDTH, DEPTH)
    cmap = colormaps[cmap].with_extremes(bad="0.88")
    im = ax.imshow(z.values, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    depths, widths = z[DEPTH].values, z[WIDTH].values
    ax.set_xticks(range(len(depths)), [str(int(d)) for d in depths])
    ax.set_yticks(range(len(widths)), [str(int(w)) for w in widths])
    ax.set(xlabel="depth L", ylabel="width N")
    for i in range(len(widths)):
        for j in range(len(depths)):
            v = float(z.values[i, j])
            if np.isfinite(v):
                r, g, b, _ = cmap((v - vmin) / (vmax - vmin) if vmax > vmin else 0.5)
                colour = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w"
                ax.text(j, i, text(i, j), ha="center", va="center", fontsize=7.5, color=colour)
            else:
                ax.text(j, i, "—", ha="center", va="center", fontsize=8, color="0.4")
    return im


def accuracy_heatmaps_figure(ds: xr.Dataset, var: str = "final_test_acc"):
    """Final test accuracy (%, mean over seeds, ok cells) over width x depth: one panel per
    method, one row per activation, one shared colour scale; each cell annotated."""
    plt = _plt()
    ds = as_grid(ds)
    acc = ok_cells(ds, var) * 100
    mean = acc.mean(SEED)
    methods, acts = _methods(ds), [str(a) for a in ds[ACT].values]
    finite = mean.values[np.isfinite(mean.values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    fig, axes = plt.subplots(len(acts), len(methods), squeeze=False, layout="constrained",
                             figsize=(3.3 * len(methods) + 1.2, 2.6 * len(acts) + 0.5))
    im = None
    for r, act in enumerate(acts):
        for c, m in enumerate(methods):
            z = mean.sel({METHOD: m, ACT: act})
            im = _heatmap(axes[r, c], z, "viridis", vmin, vmax,
                          lambda i, j, z=z.transpose(WIDTH, DEPTH): f"{float(z[i, j]):.1f}")
            axes[r, c].set_title(f"{_label(m)}, {act}" if act else _label(m))
    fig.colorbar(im, ax=axes, label=f"{'test' if 'test' in var else 'train'} accuracy (%), "
                                    "mean over seeds", shrink=0.9)
    return fig


def difference_heatmaps_figure(ds: xr.Dataset, pairs=(("pcalm", "bp"), ("pc", "bp")),
                               var: str = "final_test_acc"):
    """Per-seed accuracy differences (percentage points) over width x depth, e.g. PC-ALM - BP
    and PC - BP: mean over seeds as colour (diverging map centred at 0, symmetric), mean and
    sd written in each cell; one row per activation."""
    plt = _plt()
    ds = as_grid(ds)
    acc = ok_cells(ds, var) * 100
    present = set(_methods(ds))
    pairs = [(a, b) for a, b in pairs if a in present and b in present]
    acts = [str(a) for a in ds[ACT].values]
    diffs = {(a, b): acc.sel({METHOD: a}) - acc.sel({METHOD: b}) for a, b in pairs}
    stats = {k: (d.mean(SEED), d.std(SEED, ddof=1)) for k, d in diffs.items()}
    finite = np.concatenate([np.abs(m.values[np.isfinite(m.values)]).ravel()
                             for m, _ in stats.values()] or [np.zeros(0)])
    lim = max(1.0, float(finite.max()) if finite.size else 1.0)
    fig, axes = plt.subplots(len(acts), max(1, len(pairs)), squeeze=False, layout="constrained",
                             figsize=(3.6 * max(1, len(pairs)) + 1.2, 2.6 * len(acts) + 0.5))
    im = None
    for r, act in enumerate(acts):
        for c, (a, b) in enumerate(pairs):
            mean, sd = (s.sel({ACT: act}).transpose(WIDTH, DEPTH) for s in stats[(a, b)])

            def text(i, j, mean=mean, sd=sd):
                s = float(sd[i, j])
                return f"{float(mean[i, j]):+.1f}" + (f"\n±{s:.1f}" if np.isfinite(s) else "")
            im = _heatmap(axes[r, c], mean, "RdBu", -lim, lim, text)
            name = f"{_label(a)} − {_label(b)}"
            axes[r, c].set_title(f"{name}, {act}" if act else name)
    if im is not None:
        fig.colorbar(im, ax=axes, label="difference (points), mean over seeds", shrink=0.9)
    return fig


def cosine_per_layer_figure(ds: xr.Dataset, width=None, var: str = "bp_cos"):
    """Final cosine between each method's update of W_l and BP's (last evaluation, probe batch)
    against the relative layer index l/L (small: input side): one panel per depth, one row per
    activation, one line per method (mean over seeds, band ± sd), at one ``width`` (default:
    the narrowest)."""
    plt = _plt()
    ds = as_grid(ds)
    widths = ds[WIDTH].values
    width = widths.min() if width is None else width
    cos = last_evaluation(ds, var).sel({WIDTH: width})
    acts = [str(a) for a in ds[ACT].values]
    depths = [d for d in ds[DEPTH].values
              if np.isfinite(cos.sel({DEPTH: d}).values).any()] or list(ds[DEPTH].values)
    fig, axes = plt.subplots(len(acts), len(depths), squeeze=False, sharey=True,
                             layout="constrained",
                             figsize=(2.9 * len(depths) + 0.6, 2.6 * len(acts) + 0.5))
    for r, act in enumerate(acts):
        for c, depth in enumerate(depths):
            ax, L = axes[r, c], int(depth)
            for m in _methods(ds):
                cell = cos.sel({METHOD: m, ACT: act, DEPTH: depth})
                cell = cell.sel(weight=cell["weight"] <= L).transpose("weight", SEED)
                mean, sd = cell.mean(SEED), cell.std(SEED, ddof=0)
                x = cell["weight"].values / L
                colour = METHOD_COLORS.get(m)
                ax.plot(x, mean.values, "-", marker="." if L <= 16 else None, color=colour,
                        label=_label(m))
                ax.fill_between(x, (mean - sd).values, (mean + sd).values, color=colour,
                                alpha=0.2, lw=0)
            ax.axhline(0, color="0.6", lw=0.6)
            ax.set_title(f"N = {int(width)}, L = {L}" + (f", {act}" if act else ""), fontsize=9)
            ax.set_xlabel("l / L  (W_l; input side left)")
            if c == 0:
                ax.set_ylabel("BP cosine, final")
    _figure_legend(fig, axes[0, 0])
    return fig


def _default_curve_cells(ds: xr.Dataset) -> list[dict]:
    """Narrowest and widest width, each at the shallowest and deepest depth it has data for,
    first activation."""
    acc = ok_cells(ds, "final_test_acc")
    act = ds[ACT].values[0]
    cells = []
    for w in sorted({ds[WIDTH].values.min(), ds[WIDTH].values.max()}):
        ran = acc.sel({WIDTH: w, ACT: act}).notnull().any([METHOD, SEED])
        depths = ds[DEPTH].values[ran.values] if ran.values.any() else ds[DEPTH].values
        for d in sorted({depths.min(), depths.max()}):
            cells.append({WIDTH: w, DEPTH: d, ACT: act})
    return cells


def learning_curves_figure(ds: xr.Dataset, cells: list[dict] | None = None,
                           var: str = "test_acc"):
    """Accuracy (%) against optimiser update for a few cells (dicts of width, depth,
    activation; default: narrowest and widest width at the shallowest and deepest depth), one
    line per method, mean over seeds with a ± sd band."""
    plt = _plt()
    ds = as_grid(ds)
    cells = cells or _default_curve_cells(ds)
    acc = ok_cells(ds, var) * 100
    x_all = ds["eval_update"] if "eval_update" in ds else ds["eval"]
    fig, axes = plt.subplots(1, len(cells), squeeze=False, sharey=True, layout="constrained",
                             figsize=(3.4 * len(cells) + 0.6, 3.2))
    for ax, cell in zip(axes[0], cells):
        sel = {k: v for k, v in cell.items()}
        for m in _methods(ds):
            y = acc.sel({**sel, METHOD: m})
            x = x_all.sel({k: v for k, v in {**sel, METHOD: m}.items() if k in x_all.dims})
            if SEED in x.dims:
                x = x.max(SEED)
            mean, sd = y.mean(SEED), y.std(SEED, ddof=0)
            keep = np.isfinite(mean.values) & np.isfinite(x.values)
            colour = METHOD_COLORS.get(m)
            ax.plot(x.values[keep], mean.values[keep], color=colour, label=_label(m))
            ax.fill_between(x.values[keep], (mean - sd).values[keep], (mean + sd).values[keep],
                            color=colour, alpha=0.2, lw=0)
        act = cell.get(ACT, "")
        ax.set_title(f"N = {int(cell[WIDTH])}, L = {int(cell[DEPTH])}"
                     + (f", {act}" if act else ""), fontsize=9)
        ax.set_xlabel("update")
    axes[0, 0].set_ylabel(f"{'test' if 'test' in var else 'train'} accuracy (%)")
    _figure_legend(fig, axes[0, 0])
    return fig


def _figure_legend(fig, ax) -> None:
    """One legend for the whole (constrained-layout) figure, above the panels, in one row:
    it hides no data in any panel."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncol=len(handles),
                   fontsize=8, frameon=False)
