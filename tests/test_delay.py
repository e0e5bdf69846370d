"""Conduction delays (ctpc.core.delay, ctpc.studies.delay): delay 0 is today's code bit for bit,
the delayed Heun step matches a slow numpy re-derivation, the augmented-map stability edge
reproduces an independent companion-matrix edge and the runs, and the refusals exit 2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

import ctpc
from ctpc.build.objects import build_model, shape_key
from ctpc.core.delay import DelayedSolver
from ctpc.core.solvers import make_solver
from ctpc.core.network import init_weights
from ctpc.sim.simulation import simulate_replicas
from ctpc.studies import delay as sd

from clicases import check, cli
from conftest import small_config


def cfg_of(**sections):
    raw = small_config(**sections)
    raw["device"] = "cpu"
    return raw


# ------------------------------------------------------------------ delay 0
@pytest.mark.parametrize("scheme", ["euler", "heun", "semi_implicit", "discrete"])
def test_delay_zero_is_bit_identical(scheme):
    """dynamics.delay: 0 runs the undelayed solvers: the same bytes as a config without it."""
    integ = {"scheme": scheme, "dt": 0.5, "steps": 15}
    if scheme == "discrete":
        integ = {"scheme": scheme, "dt": 1.0, "budget": 15, "steps": None}
    plain = ctpc.simulate(cfg_of(integrator=integ, dynamics={"tau_h": 4.0, "tau_lambda": 1.0}))
    zero = ctpc.simulate(cfg_of(integrator=integ,
                                dynamics={"tau_h": 4.0, "tau_lambda": 1.0, "delay": 0.0}))
    for v in ("h", "lam", "credit_norm", "energy"):
        assert np.array_equal(plain[v].values, zero[v].values, equal_nan=True), v
    model = build_model(ctpc.load_config(cfg_of()))
    assert not isinstance(make_solver(model.dyn, scheme, delay_steps=0), DelayedSolver)


def test_delay_enters_the_replica_key():
    base = cfg_of(integrator={"dt": 0.5})
    a = ctpc.load_config(base)
    b = ctpc.load_config(base, {"dynamics.delay": 1.0})
    assert shape_key(a) != shape_key(b)


# ------------------------------------------------------------------ numpy reference (Heun)
def numpy_delayed_heun(cfg, x, y, k, dt, n_steps):
    """The delayed PC-ALM flow (ctpc.core.delay's docstring) integrated by Heun's method,
    written out per sample with numpy: state (h, lam) [H, B, N], constant history = the
    feed-forward state, what a layer sent at step m stored as (h_m, g_m, (y_hat - y)_m)."""
    ws = init_weights(cfg)
    L, N, D = len(ws), cfg.network.width, cfg.network.input_dim
    H = L - 1
    s_in, s_mid, s_out = 1 / math.sqrt(D), 1 / math.sqrt(N * L), 1 / N
    rho = cfg.dynamics.rho
    tau_h, tau_l = cfg.rates()
    drive = s_in * x @ ws[0].T                                   # [B, N]

    def sent(h, lam, hd):
        r = np.empty_like(h)
        r[0] = h[0] - drive
        for l in range(1, H):
            r[l] = h[l] - (hd[l - 1] + s_mid * np.tanh(hd[l - 1]) @ ws[l].T)
        oe = s_out * np.tanh(hd[-1]) @ ws[-1].T - y
        return r, lam + rho * r, oe

    def f(h, lam, hd, gd, od):
        r, g, _ = sent(h, lam, hd)
        slope = 1 - np.tanh(h) ** 2
        grad = g.copy()
        for l in range(H - 1):
            grad[l] -= gd[l + 1] + s_mid * slope[l] * (gd[l + 1] @ ws[l + 1])
        grad[-1] += s_out * slope[-1] * (od @ ws[-1])
        return -grad / tau_h, r / tau_l

    h = np.empty((H, *drive.shape))
    h[0] = drive
    for l in range(1, H):
        h[l] = h[l - 1] + s_mid * np.tanh(h[l - 1]) @ ws[l].T
    lam = np.zeros_like(h)
    _, g0, o0 = sent(h, lam, h)
    hist = {m: (h.copy(), g0, o0) for m in range(-k, 0)}
    for n in range(n_steps):
        hd, gd, od = hist[n - k]
        _, g, oe = sent(h, lam, hd)
        hist[n] = (h.copy(), g, oe)
        dh1, dl1 = f(h, lam, hd, gd, od)
        h2, l2 = h + dt * dh1, lam + dt * dl1
        dh2, dl2 = f(h2, l2, *hist[n + 1 - k])
        h, lam = h + 0.5 * dt * (dh1 + dh2), lam + 0.5 * dt * (dl1 + dl2)
    return h, lam


@pytest.mark.parametrize("k", [1, 3])
def test_delayed_heun_matches_numpy(k):
    cfg = ctpc.load_config(cfg_of(network={"width": 3, "depth": 4, "activation": "tanh",
                                           "input_dim": 4, "output_dim": 2},
                                  dynamics={"tau_h": 2.0, "tau_lambda": 1.0}))
    model = build_model(cfg)
    p = model.params()
    solver = make_solver(model.dyn, "heun", delay_steps=k)
    carry = solver.start(p)
    n, dt = 8, 0.3
    for _ in range(n):
        carry = solver.step(carry, p, dt)
    h, lam = numpy_delayed_heun(cfg, model.x[0].numpy(), model.y[0].numpy(), k, dt, n)
    S = solver.state(carry)[:, :, 0].numpy()
    # float64 round-off of ~100 operations on O(1) values
    np.testing.assert_allclose(S[0], h, rtol=0, atol=1e-13)
    np.testing.assert_allclose(S[1], lam, rtol=0, atol=1e-13)
    assert np.abs(lam).max() > 1e-3        # the delayed credit did move the multipliers


def test_snapshot_copies_the_buffer():
    cfg = ctpc.load_config(cfg_of(dynamics={"tau_h": 2.0, "tau_lambda": 1.0}))
    model = build_model(cfg)
    p = model.params()
    solver = make_solver(model.dyn, "semi_implicit", delay_steps=2)
    c = solver.step(solver.start(p), p, 0.5)
    snap = solver.snapshot(c)
    for _ in range(3):
        c = solver.step(c, p, 0.5)
    again = solver.snapshot(snap)
    for _ in range(3):
        again = solver.step(again, p, 0.5)
    assert torch.equal(solver.state(again), solver.state(c))


# ------------------------------------------------------------------ the scalar DDE
def test_scalar_dde_edge_matches_the_companion_matrix():
    """One hidden unit, PC, linear: tau_h h' = -rho (h - drive) - w^2 h(t - 2d) + const (the
    output loop is a round trip of 2d), i.e. x' = -b x - a x(t - tau), tau = 2d. Its Euler
    discretisation x_{n+1} = (1 - b dt) x_n - a dt x_{n-2k} has the companion matrix written
    here; its edge must be the augmented map's exactly, and near the continuous DDE's
    (Hayes: stable iff tau < arccos(-b/a) / sqrt(a^2 - b^2) for a > |b|)."""
    raw = cfg_of(network={"width": 1, "depth": 2, "activation": "linear", "input_dim": 1,
                          "output_dim": 1}, dynamics={"method": "pc", "tau_h": 1.0})
    w = init_weights(ctpc.load_config(raw))[1][0, 0]
    a = w * w                                   # s_out = 1/N = 1, tau_h = 1
    b = 0.1 * a                                 # rho chosen so that a > b: a finite edge
    tau_edge = math.acos(-b / a) / math.sqrt(a * a - b * b)
    dt = tau_edge / 2 / 30                      # the edge at ~30 steps of delay
    raw["dynamics"]["rho"] = b
    raw["integrator"] = {"scheme": "euler", "dt": dt, "steps": 10}
    edge = sd.predicted_delay_max(ctpc.load_config(raw), "euler")

    def companion_radius(k):
        K = 2 * k
        M = np.zeros((K + 1, K + 1))
        M[0, 0], M[0, K] = 1 - b * dt, -a * dt
        M[1:, :-1] = np.eye(K)
        return np.abs(np.linalg.eigvals(M)).max()
    k_np = next(k for k in range(1, 200) if companion_radius(k) > 1 + 1e-9) - 1
    assert edge.steps == k_np
    assert edge.radius_at == pytest.approx(companion_radius(k_np), abs=1e-10)
    assert edge.radius_above == pytest.approx(companion_radius(k_np + 1), abs=1e-10)
    # Euler's O(dt) error on an edge of ~30 steps: a few per cent of the delay
    assert 2 * edge.ms == pytest.approx(tau_edge, rel=0.06)


# ------------------------------------------------------------------ predicted vs measured
@pytest.mark.parametrize("scheme", ["euler", "semi_implicit"])
def test_predicted_edge_holds_within_5_percent(scheme):
    """Runs at the predicted edge k (stable) and at k + 1 (diverged) on a small linear
    network, with dt such that k >= 20: k + 1 is at most 5 % above the edge, so the true edge
    lies within 5 % of the prediction (check_delay_prediction's runs, as delay_edges does)."""
    cfg = ctpc.load_config(sd.edge_model(True, dt=0.02))
    edge = sd.predicted_delay_max(cfg, scheme)
    assert edge.steps >= 20 and edge.steps + 1 <= 1.05 * edge.steps
    rows = sd.check_delay_prediction(cfg, scheme, edge)
    assert [r["observed"] for r in rows] == ["stable", "unstable"], rows


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("sets,needle", [
    (["integrator.dt=0.3", "dynamics.delay=1.0"], "the nearest valid delay is 0.9 ms"),
    (["backend=brian2", "dynamics.delay=1.0"], "cannot delay"),
], ids=["not a multiple", "brian2"])
def test_refusals_exit_2(sets, needle, tmp_path, capsys):
    from ctpc.cli.simulate import main
    model = tmp_path / "m.yaml"
    model.write_text(yaml.safe_dump(cfg_of(integrator={"dt": 0.5, "steps": 3})))
    argv = [model, "--out", tmp_path / "o.nc", "--quiet"]
    for s in sets:
        argv += ["--set", s]
    code, err = cli(main, argv, capsys)
    check(code, err, 2, [needle], max_lines=4)


def test_a_stacked_replica_keeps_its_history_when_another_diverges():
    """Replica 1 (a delay of 2 steps of 0.4 ms with tau_lambda = 0.2 ms: far past its edge)
    diverges early; the engine freezes it, and replica 0 (2 steps of 0.1 ms, stable) goes on
    with its own delay history: its run equals its own single run (the history is not reset
    to constant at the freeze)."""
    stable = cfg_of(integrator={"scheme": "semi_implicit", "dt": 0.1, "steps": 300,
                                "check_every": 16},
                    dynamics={"tau_h": 4.0, "tau_lambda": 1.0, "delay": 0.2})
    wild = cfg_of(integrator={"scheme": "semi_implicit", "dt": 0.4, "steps": 300,
                              "check_every": 16},
                  dynamics={"tau_h": 4.0, "tau_lambda": 0.2, "delay": 0.8})
    both = simulate_replicas([stable, wild])
    assert both[1].attrs["status"] == "diverged" and both[0].attrs["status"] == "ok"
    assert 16 < both[1].attrs["steps_completed"] < 280      # frozen mid-run, not at the start
    alone = ctpc.simulate(stable)
    for v in ("h", "lam", "credit_norm", "bp_cos"):
        np.testing.assert_allclose(both[0][v].values, alone[v].values, rtol=1e-10,
                                   atol=1e-13, err_msg=v)
