"""Figures of the biological-constraints studies (guide: biology), drawn from saved files:
BP alignment against noise, the stability edge against delay (predicted and measured), and
spiking error neurons against the rate model as r_max grows.

Each function takes the xarray Dataset a study wrote (``sims/biology.py``) and returns a
matplotlib Figure. Like all of :mod:`ctpc.analysis`, this needs xarray and matplotlib only.
"""
from __future__ import annotations

# ---------------------------------------------------------------- noise (BP alignment vs sigma)
def plot_noise_alignment(ds):
    """BP cosine and relative error of the weight read-out against sigma, one line per weight
    layer, from :func:`ctpc.studies.noise.noise_alignment` (``bp_cos``, ``bp_relerr`` [sigma,
    weight], with their window standard deviations as error bars). sigma = 0 is drawn at the
    left edge of the log axis."""
    import matplotlib.pyplot as plt
    import numpy as np
    sig = np.asarray(ds.sigma.values, dtype=float)
    pos = sig[sig > 0]
    x = np.where(sig > 0, sig, pos.min() / 3 if pos.size else 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    for ax, var, label in ((axes[0], "bp_cos", "BP cosine"),
                           (axes[1], "bp_relerr", "relative error to BP")):
        for w in ds.weight.values:
            ax.errorbar(x, ds[var].sel(weight=w).values, yerr=ds[f"{var}_sd"].sel(weight=w).values,
                        marker="o", ms=3, capsize=2, label=f"W{int(w)}")
        ax.set_xscale("log")
        ax.set_xlabel("sigma on h and lambda (1/sqrt(ms); leftmost: 0)")
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"noisy PC-ALM fixed point ({ds.attrs.get('activation', '')})")
    return fig


def plot_noise_training(ds):
    """Final test accuracy and per-layer probe BP cosine, noise off against on, from
    :func:`ctpc.studies.noise.noise_training`."""
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    labels = [str(v) for v in ds.noise.values]
    axes[0].bar(labels, ds.test_acc.values)
    axes[0].set_ylabel("final test accuracy")
    width = 0.8 / len(labels)
    w = np.asarray(ds.weight.values)
    for i, lab in enumerate(labels):
        axes[1].bar(w + (i - (len(labels) - 1) / 2) * width, ds.bp_cos.isel(noise=i).values,
                    width, label=f"noise {lab}")
    axes[1].set_xlabel("weight layer")
    axes[1].set_ylabel("probe BP cosine")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"digits training, sigma = {ds.attrs.get('sigma', '')}")
    return fig



# ---------------------------------------------------------------- delays (stability edge)
def plot_delay_edges(ds):
    """Predicted (augmented one-step map) and measured largest stable delay per scheme, one
    group of bars per model's time constants, from :func:`ctpc.studies.delay.delay_edges`
    (``predicted_ms``, ``measured_steps`` [model, scheme], ``dt`` [model]). A measured tick
    is missing where the runs disagreed with the prediction (or were not run)."""
    import matplotlib.pyplot as plt
    import numpy as np
    models, schemes = [str(m) for m in ds.model.values], [str(s) for s in ds.scheme.values]
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(models), 3.6), constrained_layout=True)
    width = 0.8 / len(schemes)
    x = np.arange(len(models))
    dt = ds.dt.values
    for j, s in enumerate(schemes):
        off = x + (j - (len(schemes) - 1) / 2) * width
        ax.bar(off, ds.predicted_ms.sel(scheme=s).values, width, label=s, alpha=0.8)
        ax.plot(off, ds.measured_steps.sel(scheme=s).values * dt, "k_", ms=8)
    ax.set_xticks(x, [f"{m}\n(dt = {d:g} ms)" for m, d in zip(models, dt)], fontsize=8)
    ax.set_ylabel("largest stable delay (ms)")
    ax.set_title("delay edge: bars predicted, black ticks measured")
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_delay_propagation(ds):
    """Credit arrival time at the input layer against depth, one line per delay, with the
    fitted exponent in the legend, from :func:`ctpc.studies.delay.delay_propagation`
    (``arrival_time`` [delay, network.depth], ``exponent``, ``speed``, ``delay_ms``)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.8), constrained_layout=True)
    depth = ds["network.depth"].values
    for i in range(ds.sizes["delay"]):
        d = ds.isel(delay=i)
        ax.loglog(depth, d.arrival_time.values, "o-",
                  label=f"d = {float(d.delay_ms):g} ms: p = {float(d.exponent):.2f}, "
                        f"{float(d.speed):.3f} layers/ms")
    ax.set_xlabel("depth L")
    ax.set_ylabel("arrival at layer 1 (ms)")
    ax.set_title(f"PC-ALM credit arrival with delays (wave: {float(ds.speed_wave):.3f} "
                 "layers/ms at d = 0)", fontsize=9)
    ax.legend(fontsize=7)
    return fig



# ---------------------------------------------------------------- spiking errors (r_max limit)
def plot_spiking_limit(ds):
    """Spiking error neurons against the rate model as r_max grows, from
    :func:`ctpc.studies.spiking.spiking_limit`: left, the relative error of the final read-out
    (all weights together) against the rate model's, with the shot-noise slope r_max^-1/2 for
    reference; right, the BP cosine of the spiking read-out, the rate model's as a dashed line.
    One colour per activation."""
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    r = np.asarray(ds.r_max.values, dtype=float)
    for act in ds.activation.values:
        sel = ds.sel(activation=act, weight=0)
        line, = axes[0].plot(r, sel.rate_relerr.values, marker="o", label=str(act))
        axes[1].plot(r, sel.bp_cos.values, marker="o", color=line.get_color(), label=str(act))
        axes[1].axhline(float(sel.rate_bp_cos), ls="--", color=line.get_color(), lw=1)
    first = float(ds.rate_relerr.sel(weight=0).isel(r_max=-1).max())
    axes[0].plot(r, first * np.sqrt(r[-1] / r), ls=":", color="gray", label="∝ r_max^-1/2")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("r_max (Hz)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("rel. error vs rate read-out")
    axes[1].set_ylabel("BP cosine (dashed: rate model)")
    axes[0].legend(fontsize=8)
    fig.suptitle("spiking error neurons: final read-out vs the rate model")
    return fig


def plot_spiking_arrival(ds):
    """Credit arrival time at the input layer against depth, rate vs spiking error neurons,
    log-log with the fitted exponents, from :func:`ctpc.studies.spiking.spiking_arrival`."""
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(4.5, 3.5), constrained_layout=True)
    depth = np.asarray(ds["network.depth"].values, dtype=float)
    for kind in ds.errors.values:
        sel = ds.sel(errors=kind)
        ax.plot(depth, sel.arrival_time.values, marker="o",
                label=f"{kind}: p = {float(sel.exponent):.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("depth L")
    ax.set_ylabel("arrival time at layer 1 (ms)")
    ax.legend(fontsize=8)
    ax.set_title("ballistic arrival with spiking errors")
    return fig
