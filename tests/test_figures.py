"""Figures a scientist can read: every variable of a simulate, training and sweep result (and
of the analysis results) has a short ``long_name`` and no ``units = "1"`` (xarray would print
"[1]" in every axis label); the ctpc.analysis.plotting figures have no "[1]" in a label, nothing cut at
the figure's edge, legends outside the data and log axes with more than one labelled tick."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from conftest import small_config  # noqa: E402

import ctpc  # noqa: E402
from ctpc import analysis  # noqa: E402
from ctpc.analysis import plotting
from ctpc.common.labels import MAX_LONG_NAME  # noqa: E402

TRAIN = {"dtype": "float32", "device": "cpu",
         "network": {"width": 6, "depth": 3, "activation": "relu"},
         "data": {"source": "digits", "batch_size": 16, "train_subset": 64, "test_subset": 32},
         "dynamics": {"method": "pcalm", "state_lr": 0.25, "alpha": 1.0},
         "integrator": {"scheme": "discrete", "dt": 1.0, "budget": 6},
         "training": {"max_updates": 3, "eval_every": 1, "checkpoint_every": None}}


def bad_labels(ds: xr.Dataset) -> list[str]:
    """Every variable (data and coordinates) without a short long_name, or with units '1'."""
    bad = []
    for name, v in ds.variables.items():
        long_name = v.attrs.get("long_name")
        if not long_name or len(long_name) > MAX_LONG_NAME:
            bad.append(f"{name}: long_name {long_name!r}")
        if "units" in v.attrs and str(v.attrs["units"]).strip() in ("1", ""):
            bad.append(f"{name}: units {v.attrs['units']!r}")
    return bad


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny simulate run, written and read back (attributes survive netCDF)."""
    out = tmp_path_factory.mktemp("fig") / "run.nc"
    ctpc.simulate(small_config(integrator={"scheme": "semi_implicit", "dt": 1.0, "steps": 24},
                               record={"every": 1, "samples": [0, 1]}), out=out)
    return ctpc.open_results(out)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """A simulate sweep and a training sweep (over method, as sims/grid.py's grid) on one
    in-process Dask client."""
    from distributed import Client

    from ctpc.sweep import run_sweep
    d = tmp_path_factory.mktemp("sweeps")
    sim = small_config(integrator={"scheme": "semi_implicit", "dt": 1.0, "steps": 12},
                       record={"every": 1, "samples": [0]})
    sim["sweep"] = {"integrator.dt": [0.5, 1.0], "network.depth, integrator.steps": [[3, 12],
                                                                                    [4, 16]]}
    train = {**TRAIN, "sweep": {"dynamics.method": ["bp", "pcalm"], "network.width": [6],
                                "network.depth": [3], "seed": [0, 1]}}
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        return (run_sweep(sim, out=d / "sim.nc", client=client, progress=False),
                run_sweep(train, out=d / "train.nc", client=client, progress=False))


# ------------------------------------------------------------------ dataset attributes
def test_simulate_result_has_short_labels_and_no_unit_one(run):
    assert bad_labels(run) == []
    assert run.time.attrs["units"] == "ms" and run.h.attrs["long_name"] == "activity h"
    assert "units" not in run.bp_cos.attrs and "BP" in run.bp_cos.attrs["description"]


def test_training_result_has_short_labels_and_no_unit_one(tmp_path):
    ds = ctpc.train(TRAIN, out=tmp_path / "t.nc")
    assert bad_labels(ds) == []
    assert bad_labels(ctpc.open_results(tmp_path / "t.nc")) == []
    assert ds.eval_wall_time.attrs["units"] == "s"


def test_sweep_results_have_short_labels_and_no_unit_one(sweeps):
    sim, train = sweeps
    assert bad_labels(sim) == []
    assert bad_labels(train) == []
    assert sim["integrator.dt"].attrs == {"long_name": "dt", "units": "ms",
                                          "description": "swept config key integrator.dt"}
    assert sim.dt.attrs["units"] == "ms" and "units" not in sim.eta_h.attrs


def test_analysis_results_have_short_labels_and_no_unit_one(run, sweeps):
    sim, _ = sweeps
    for res in (analysis.credit_arrival(run, 0.5, "final"), analysis.wavefront_speed(run),
                analysis.alignment_times(run, 0.5), analysis.credit_distribution(run),
                analysis.arrival_scaling(sim.sel({"integrator.dt": 1.0}), reference="final")):
        assert bad_labels(res) == []
    assert analysis.credit_arrival(run).arrival_time.attrs["units"] == "ms"


# ------------------------------------------------------------------ figures
def labels_of(fig) -> list[str]:
    out = []
    for ax in fig.axes:        # colorbars are axes too
        out += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
    return out


def check_figure(fig, ctpc_figure: bool = True) -> None:
    """No '[1]' in a label; for ctpc's own figures also: every text inside the figure (nothing
    clipped at its edge), each axes legend outside its axes, each log axis with at least two
    labelled major ticks."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    assert not [s for s in labels_of(fig) if "[1]" in s], labels_of(fig)
    if not ctpc_figure:
        plt.close(fig)
        return
    box = fig.bbox
    undrawn = set()                 # labels of ticks outside the view: matplotlib skips them
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo <= tick.get_loc() <= hi:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    for t in fig.findobj(matplotlib.text.Text):
        if not t.get_visible() or not t.get_text().strip() or id(t) in undrawn:
            continue
        e = t.get_window_extent(r)
        assert (e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1
                and e.y1 <= box.y1 + 1), f"text {t.get_text()!r} is cut at the figure's edge"
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            assert not leg.get_window_extent(r).overlaps(ax.get_window_extent(r)), \
                f"legend inside the data of {ax.get_title()!r}"
        for which in ("x", "y"):
            axis = ax.xaxis if which == "x" else ax.yaxis
            if axis.get_scale() != "log":
                continue
            lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
            shown = [t.get_text() for t in axis.get_ticklabels()
                     if t.get_text() and lo <= t.get_position()[0 if which == "x" else 1] <= hi]
            assert len(shown) >= 2, f"log {which} axis of {ax.get_title()!r}: ticks {shown}"
    plt.close(fig)


def test_xarray_plots_of_results_have_no_unit_one(run, sweeps):
    _, train = sweeps
    for da in (run.h.isel(sample=0, layer=0), run.credit_norm, run.bp_cos, run.energy,
               run.grad_w2, train.final_test_acc, train.test_acc.isel(seed=0),
               analysis.credit_arrival(run).arrival_step):
        fig = plt.figure()
        da.plot()
        check_figure(fig, ctpc_figure=False)


def test_propagation_figures(run, sweeps):
    sim, _ = sweeps
    cut = sim.sel({"integrator.dt": 1.0})
    check_figure(plotting.plot_credit_heatmap(run).figure)
    check_figure(plotting.plot_credit_heatmap(run, log_time=True).figure)
    check_figure(plotting.plot_credit_distribution(
        {"run": analysis.credit_distribution(run)}).figure)
    scaling = analysis.arrival_scaling(cut, 0.3, reference="final")
    check_figure(plotting.plot_arrival_scaling({"PC-ALM": scaling, "again": scaling}).figure)


def test_stability_figures(run):
    status = xr.DataArray(np.array([[["ok", "ok", "diverged"], ["ok", "diverged", "diverged"]]]),
                          dims=("method", "scheme", "dt"),
                          coords={"method": ["pcalm"], "scheme": ["euler", "heun"],
                                  "dt": [0.6, 1.1, 2.3]})
    predicted = xr.DataArray([[1.5, 1.0]], dims=("method", "scheme"),
                             coords={"method": ["pcalm"], "scheme": ["euler", "heun"]})
    check_figure(plotting.stability_map_figure(status, predicted, title="t"))
    runs = xr.concat([run[["bp_cos", "credit_norm", "bp_adjoint_norm"]]] * 3, dim="run")
    runs = runs.assign_coords(run=np.arange(3), scheme=("run", ["semi_implicit"] * 2 + ["discrete"]),
                              dt=("run", [0.5, 1.0, 1.0]))
    check_figure(plotting.flow_vs_discrete_figure(runs))


def test_grid_figures(sweeps):
    _, train = sweeps
    for make in (plotting.accuracy_heatmaps_figure, plotting.difference_heatmaps_figure,
                 plotting.cosine_per_layer_figure, plotting.learning_curves_figure):
        check_figure(make(train))


def test_log_ticks_never_leave_one_labelled_tick():
    for lo, hi in ((0.6, 3.5), (1.2, 1.9), (0.1, 1.0), (15, 900)):
        fig, ax = plt.subplots()
        ax.plot([lo, hi], [lo, hi])
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
        plotting.log_ticks(ax, "x")
        plotting.log_ticks(ax, "y", [lo, (lo + hi) / 2, hi])
        check_figure(fig)
