"""ctpc.analysis on synthetic datasets with known answers: crossing definition and
interpolation, never-arrived reporting, wavefront speed, power-law fit, alignment times, credit
distribution, and the same results through a combined (padded) sweep dataset."""
import numpy as np
import pytest
import xarray as xr

from ctpc import analysis
from ctpc.analysis.crossing import first_crossing, settle_crossing
from ctpc.sweep.combine import combine, summarize_cell
from ctpc.sweep.cells import Axis, Cell


def wave_run(depth, speed=0.5, dt=1.0, t_end=None, rise=10.0, adjoint=1.0, tau_h=4.0,
             tau_lambda=1.0):
    """A run whose credit in layer l ramps linearly from 0 to 1 over `rise` ms, starting when a
    front moving at `speed` layers/ms from the top layer H = depth-1 reaches it."""
    H = depth - 1
    t_end = t_end if t_end is not None else 2 * H / speed + 2 * rise
    time = np.arange(0, t_end + dt / 2, dt)
    layer = np.arange(1, H + 1)
    start = (H - layer) / speed
    credit = np.clip((time[:, None] - start[None, :]) / rise, 0, 1)
    weight = np.arange(1, 4)
    ds = xr.Dataset(
        {"credit_norm": (("time", "layer"), credit),
         "bp_adjoint_norm": (("layer",), np.full(H, adjoint)),
         "bp_cos": (("time", "weight"), _cos(time, t_end)),
         "bp_relerr": (("time", "weight"), 1 - _cos(time, t_end))},
        coords={"time": time, "step": ("time", np.round(time / dt).astype(int)),
                "layer": layer, "weight": weight})
    ds.attrs = {"dt": dt, "tau_h": tau_h, "tau_lambda": tau_lambda, "depth": depth,
                "status": "ok"}
    return ds


def _cos(time, t_end):
    # weight 1 rises linearly to 1 at t_end; weight 2 overshoots then dips below 0.9 and comes
    # back; weight 3 never exceeds 0.5
    w1 = time / t_end
    w2 = np.where(time < t_end / 2, 1.0, 0.8)
    w2[time > 0.75 * t_end] = 1.0
    w3 = 0.5 * time / t_end
    return np.stack([w1, w2, w3], axis=1)


def test_first_crossing_interpolates_between_records():
    t = np.array([0.0, 2.0, 4.0, 6.0])
    y = np.array([0.0, 0.2, 0.6, 1.0])
    assert first_crossing(t, y, 0.4) == pytest.approx(3.0)            # halfway 0.2 -> 0.6
    assert first_crossing(t, y, 0.4, interpolate=False) == 4.0        # first record >= level
    assert first_crossing(t, y, 0.0) == 0.0
    assert np.isnan(first_crossing(t, y, 1.5))                        # never: NaN
    y_nan = np.array([0.0, np.nan, 0.6, 1.0])                         # padding is skipped
    assert first_crossing(t, y_nan, 0.3) == pytest.approx(2.0)
    assert settle_crossing(t, np.array([0.0, 1.0, 0.0, 1.0]), 0.5) == pytest.approx(5.0)
    assert np.isnan(settle_crossing(t, np.array([0.0, 1.0, 1.0, 0.0]), 0.5))


def test_credit_arrival_of_a_known_wave():
    ds = wave_run(9, speed=0.5, rise=10.0)
    arr = analysis.credit_arrival(ds, 0.5, "final")
    # layer l starts at (H - l) / speed and reaches 0.5 after rise/2 = 5 ms
    expected = (8 - arr.layer.values) / 0.5 + 5.0
    np.testing.assert_allclose(arr.arrival_time.values, expected)
    assert arr.arrival_time.attrs["units"] == "ms" and arr.arrived.all()
    np.testing.assert_allclose(arr.reference_drift.values, 0.0)      # settled ramps
    # against the BP adjoint (twice the final credit), half of it is reached exactly at the top
    twice = wave_run(9, adjoint=2.0)
    at_adj = analysis.credit_arrival(twice, 0.5, "bp_adjoint")
    np.testing.assert_allclose(at_adj.arrival_time.values, (8 - at_adj.layer.values) / 0.5 + 10)
    never = analysis.credit_arrival(wave_run(9, adjoint=4.0), 0.5, "bp_adjoint")
    assert not never.arrived.any() and never.arrival_time.isnull().all()
    with pytest.raises(ValueError, match="reference must be one of"):
        analysis.credit_arrival(ds, 0.5, "bp")
    with pytest.raises(ValueError, match="fraction"):
        analysis.credit_arrival(ds, 1.5)


def test_wavefront_speed_and_theory():
    ds = wave_run(17, speed=0.25, tau_h=4.0, tau_lambda=4.0)
    front = analysis.wavefront_speed(ds)
    assert float(front.speed) == pytest.approx(0.25)
    assert float(front.speed_theory) == pytest.approx(0.25)          # 1/sqrt(4 * 4)
    assert float(front.r2) == pytest.approx(1.0) and int(front.n_layers) == 16
    assert front.speed.attrs["units"] == "layers/ms"
    pc = wave_run(17, speed=0.25, tau_lambda=np.inf)
    assert np.isnan(float(analysis.wavefront_speed(pc).speed_theory))   # PC: no wave speed


def test_power_law_fit_and_arrival_scaling():
    law = analysis.fit_power_law([8, 16, 32, 64], 3.0 * np.array([8, 16, 32, 64]) ** 1.5)
    assert law.p == pytest.approx(1.5) and law.prefactor == pytest.approx(3.0)
    assert law.r2 == pytest.approx(1.0) and law.n == 4
    runs = [wave_run(L, speed=0.5) for L in (9, 17, 33)]
    res = analysis.arrival_scaling(runs, 0.5, "final")
    # arrival at layer 1: (L - 2) / 0.5 + 5: affine in L, so the slope gives the speed back
    np.testing.assert_allclose(res.arrival_time.values, (np.array([9, 17, 33]) - 2) / 0.5 + 5)
    assert float(res.speed_from_depths) == pytest.approx(0.5)
    # The exponent is the least-squares slope of log(arrival) on log(L), here of an affine
    # arrival time; the same fit done by hand in numpy is the reference (to round-off).
    depths = np.array([9.0, 17.0, 33.0])
    slope = np.polyfit(np.log(depths), np.log((depths - 2) / 0.5 + 5), 1)[0]
    assert float(res.exponent) == pytest.approx(slope, rel=1e-12) and bool(res.all_arrived)
    # one depth never arrives (its budget is too short): no exponent, and it says where
    short = [wave_run(9), wave_run(17), wave_run(33, t_end=20.0)]
    res = analysis.arrival_scaling(short, 0.5, "bp_adjoint")
    assert res.arrived.values.tolist() == [True, True, False]
    assert np.isnan(float(res.exponent)) and not bool(res.all_arrived)


def test_alignment_times():
    ds = wave_run(5, t_end=100.0)
    al = analysis.alignment_times(ds, threshold=0.9)
    assert float(al.reach_time.sel(weight=1)) == pytest.approx(90.0)
    assert float(al.settle_time.sel(weight=1)) == pytest.approx(90.0)
    assert float(al.reach_time.sel(weight=2)) == 0.0                 # starts at 1.0
    assert float(al.settle_time.sel(weight=2)) == pytest.approx(75.5)  # interpolated back up
    assert not bool(al.reached.sel(weight=3)) and np.isnan(float(al.settle_time.sel(weight=3)))
    assert float(al.final_cos.sel(weight=3)) == pytest.approx(0.5)


def test_credit_distribution():
    ds = wave_run(9)                                   # every layer ends at credit 1 = adjoint
    d = analysis.credit_distribution(ds)
    assert float(d.evenness) == pytest.approx(1.0) and float(d.total_variation) == 0.0
    np.testing.assert_allclose(d.ratio_to_bp.values, 1.0)
    assert float(d.first_to_last) == pytest.approx(1.0)
    early = analysis.credit_distribution(ds, time=8.0)   # front has covered 4 of 8 layers
    assert float(early.evaluated_at) == 8.0
    assert float(early.first_to_last) == 0.0 and float(early.evenness) < 0.8
    assert float(early.total_variation) > 0.3


def _as_sweep(runs_by_depth):
    axes = [Axis("network.depth", ("network.depth",), tuple((L,) for L in runs_by_depth))]
    cells = [Cell((i,), {"network.depth": L}, None, f"k{L}")
             for i, L in enumerate(runs_by_depth)]
    summaries = {}
    for L, ds in runs_by_depth.items():
        full = ds.copy()
        full.attrs.update(status="ok")
        summaries[f"k{L}"] = summarize_cell(full)
    return combine(axes, cells, summaries, {}, base_config={"name": "t"}, cells_dir="x")


def test_analysis_on_a_padded_sweep_equals_per_run():
    runs = {L: wave_run(L, speed=0.5, dt=dt) for L, dt in ((9, 1.0), (17, 0.5), (33, 1.0))}
    sweep = _as_sweep(runs)
    assert sweep.sizes["layer"] == 32 and "step" not in sweep.coords    # dt differs per cell
    arr = analysis.credit_arrival(sweep, 0.5, "final")
    for L, ds in runs.items():
        one = analysis.credit_arrival(ds, 0.5, "final")
        got = arr.arrival_time.sel({"network.depth": L}).sel(layer=one.layer)
        np.testing.assert_allclose(got.values, one.arrival_time.values)
        np.testing.assert_allclose(
            arr.arrival_step.sel({"network.depth": L}).sel(layer=one.layer), one.arrival_step)
    assert not arr.arrived.sel({"network.depth": 9}).sel(layer=20)     # padding never arrives
    scaled = analysis.arrival_scaling(sweep, 0.5, "final")
    direct = analysis.arrival_scaling(list(runs.values()), 0.5, "final")
    assert float(scaled.exponent) == pytest.approx(float(direct.exponent))
    fronts = analysis.wavefront_speed(sweep)
    np.testing.assert_allclose(fronts.speed.values, 0.5)
    dist = analysis.credit_distribution(sweep)
    np.testing.assert_allclose(dist.evenness.values, 1.0)
