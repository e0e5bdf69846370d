"""Spec 5.3 on a linear chain (eta_h = 0.24, alpha = 1, semi-implicit, dt = 1): PC-ALM's credit
travels as a wave (arrival time at the input layer ~ L), PC's diffuses (~ L^2, and within
PC-ALM's budget it never arrives). Measured with ctpc.analysis on real runs.

Network: linear, width 16, batch 16 of the digits set, float64, seed 0. Small enough for CI,
wide enough that the near-identity residual blocks behave like the spec's continuum picture.
"""
import numpy as np
import pytest
import torch

import ctpc
from ctpc import analysis

ETA_H, ALPHA = 0.24, 1.0
DEPTHS = (16, 32, 64)
SPEED = np.sqrt(ALPHA * ETA_H)     # layers per step (dt = 1 ms: per ms), spec 5.3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # 16 x 16 matrices: a second thread only adds synchronisation, and on a busy machine
    # OpenMP spin-waiting makes it 30x slower (measured: 3 s vs 87 s for one PC run).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chain(method, L, steps, every=1):
    dynamics = {"method": method, "rho": 1.0, "state_lr": ETA_H}
    if method == "pcalm":
        dynamics["alpha"] = ALPHA
    return ctpc.simulate({
        "dtype": "float64", "device": "cpu", "seed": 0,
        "network": {"width": 16, "depth": L, "activation": "linear"},
        "data": {"source": "digits", "batch_size": 16},
        "dynamics": dynamics,
        "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": steps},
        "record": {"every": every, "variables": []}})


@pytest.fixture(scope="module")
def pcalm_runs():
    # Budget 4L: twice the ballistic arrival time L / SPEED ~ 2L.
    return [chain("pcalm", L, 4 * L) for L in DEPTHS]


@pytest.fixture(scope="module")
def pc_runs_same_budget():
    return [chain("pc", L, 4 * L) for L in DEPTHS]


@pytest.fixture(scope="module")
def pc_runs_settled():
    # Budget 8 L^2: diffusion fills the chain in ~L^2 steps; by 8 L^2 layer 1's credit has
    # settled to within 3 % (the test checks it). 16 L^2 settles to 0.3 % but doubles the cost
    # and moves the exponent by only 0.006 (1.749 -> 1.743). Records every L^2/128 steps.
    return [chain("pc", L, 8 * L * L, every=L * L // 128) for L in DEPTHS]


@pytest.mark.parametrize("reference", ["bp_adjoint", "final"])
def test_pcalm_arrival_scales_linearly_with_depth(pcalm_runs, reference):
    res = analysis.arrival_scaling(pcalm_runs, fraction=0.5, reference=reference)
    steps = res.arrival_step.values
    print(f"PC-ALM arrival steps ({reference}) L={DEPTHS}: {np.round(steps, 1)} "
          f"(spec: 34, 68, 136); exponent {float(res.exponent):.3f}; "
          f"speed from depths {float(res.speed_from_depths):.3f} layers/step")
    assert bool(res.all_arrived)
    assert 0.85 <= float(res.exponent) <= 1.15          # the acceptance band
    # Ballistic: arrival ~ L / sqrt(alpha eta_h). The continuum theory ignores the discrete
    # layers, the Euler step and the threshold, which shift it by a few percent: allow 10 %.
    assert float(res.speed_from_depths) == pytest.approx(SPEED, rel=0.10)
    np.testing.assert_allclose(steps, np.array(DEPTHS) / SPEED, rtol=0.10)


def test_pcalm_wavefront_speed_within_one_run(pcalm_runs):
    ds = pcalm_runs[-1]
    front = analysis.wavefront_speed(ds)          # fraction 0.2 of the final value
    print(f"L=64 wavefront speed {float(front.speed):.3f} layers/ms, "
          f"theory {float(front.speed_theory):.3f}, r2 {float(front.r2):.4f}")
    assert float(front.speed_theory) == pytest.approx(SPEED)
    assert float(front.speed) == pytest.approx(SPEED, rel=0.10)   # same reasoning as above
    assert float(front.r2) > 0.99 and int(front.n_layers) == 63   # a straight front


def test_pc_credit_never_arrives_within_pcalm_budget(pc_runs_same_budget, pcalm_runs):
    res = analysis.arrival_scaling(pc_runs_same_budget, 0.5, "bp_adjoint")
    assert not res.arrived.any() and not bool(res.all_arrived)
    assert np.isnan(float(res.exponent))            # reported as never arrived, not fitted
    # Spec 5.3: after 4L steps PC's first- to last-layer credit ratio was 1e-2, 1e-4, 3e-8
    # (its network unspecified); we require the same order of magnitude (factor 10 either way)
    # and PC-ALM's ratio to be of order one over the same budget.
    ratio = [float(analysis.credit_distribution(d).first_to_last) for d in pc_runs_same_budget]
    alm = [float(analysis.credit_distribution(d).first_to_last) for d in pcalm_runs]
    print(f"first/last credit after 4L: PC {ratio}, PC-ALM {alm}")
    for got, spec in zip(ratio, (1e-2, 1e-4, 3e-8)):
        assert spec / 10 < got < spec * 10
    assert min(alm) > 0.3


def test_pc_arrival_scales_quadratically_with_depth(pc_runs_settled):
    res = analysis.arrival_scaling(pc_runs_settled, 0.5, "final")
    arr = [analysis.credit_arrival(d, 0.5, "final").sel(layer=1) for d in pc_runs_settled]
    drift = [float(a.reference_drift) for a in arr]
    print(f"PC arrival steps (final) L={DEPTHS}: {np.round(res.arrival_step.values, 1)}; "
          f"exponent {float(res.exponent):.3f}; reference drift {np.round(drift, 4)}")
    # The reference has settled (< 3 % change over the last quarter of the run), so the
    # half-value time measures diffusion, not the budget.
    assert max(drift) < 0.03
    assert bool(res.all_arrived)
    # Diffusive, not ballistic: a ballistic front arrives after ~L steps (exponent 1, as
    # PC-ALM's does), a diffusive one after ~L^2 (exponent 2). The bound is the midpoint of the
    # two regimes, 1.5, so the test decides which one PC is in rather than matching a measured
    # value (measured 1.73 - 1.80 over seeds 0-2 at width 16, ~2.0 at width 8: below the
    # asymptotic 2 because the half-value time includes part of PC's slow final approach).
    assert float(res.exponent) > 1.5
    assert float(res.exponent) < 2.5                  # and not beyond diffusion (midpoint 2..3)
    # PC's biased fixed point: its credit never reaches half the BP adjoint, even settled.
    assert not analysis.arrival_scaling(pc_runs_settled, 0.5, "bp_adjoint").arrived.any()
