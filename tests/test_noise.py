"""Noisy neurons in the torch backend (ctpc.core.noise; guide: biology, "Noisy neurons").

The statistics are checked against closed forms, with fixed seeds and tolerances stated in
standard errors (SE) of the estimator:

* Ornstein-Uhlenbeck: one linear neuron whose output weight is 0 obeys dh = -(h - d)/tau dt +
  sigma dW, stationary variance sigma^2 tau / 2. Euler-Maruyama's own stationary variance is
  sigma^2 tau / (2 - dt/tau) (the AR(1) recursion h' = (1 - a) h + sigma sqrt(dt) xi, a =
  dt/tau); stochastic Heun's is sigma^2 dt (1 - a/2)^2 / (1 - (1 - a + a^2/2)^2).
* Weak order: on a linear network (drift A S + c, additive noise of covariance Q) the exact
  covariance at T is Van Loan's integral int_0^T e^{As} Q e^{A^T s} ds; Euler-Maruyama's is the
  recursion C' = (I + dt A) C (I + dt A)^T + dt Q. Its error in tr C falls as dt^1.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml

import ctpc
from ctpc.build.objects import build_model, shape_key
from ctpc.config.schema import ConfigError
from ctpc.core import noise as noise_mod
from ctpc.core.engine import integrate
from ctpc.core.integrators import ExplicitRK, GaussSeidel
from ctpc.core.solvers import make_solver
from ctpc.core.noise import NoisyGaussSeidel, NoisyRK
from ctpc.sim.simulation import simulate_replicas
from ctpc.training.setup import compilable

from clicases import check, cli
from test_solver_protocol import GOLDEN, fingerprint, model_of


# ------------------------------------------------------------------ Ornstein-Uhlenbeck
def ou_config(tmp_path, scheme, *, pop="h", sigma=0.3, tau=1.0, dt=0.01, t_end=8.0,
              batch=20000, seed=0):
    """One linear neuron (width 1, depth 2) with W_2 = 0: pc, dh/dt = -(h - drive)/tau_h.
    With pop 'e': leaky error neurons (tau_e = tau) and tau_h = 1e6 ms, so that h stays at the
    drive (it moves by ~|e| t_end / tau_h ~ 1e-6) and e is the OU process, mean 0."""
    path = tmp_path / "w.npz"
    np.savez(path, w1=np.array([[0.7, -0.4]]), w2=np.zeros((1, 1)))
    n = int(round(t_end / dt))
    dyn = {"method": "pc", "tau_h": tau, "noise": {"h": sigma}} if pop == "h" else \
        {"method": "pc", "tau_h": 1e6, "tau_e": tau, "noise": {"e": sigma}}
    return {"dtype": "float64", "device": "cpu", "seed": seed,
            "network": {"width": 1, "depth": 2, "activation": "linear", "input_dim": 2,
                        "output_dim": 1, "weights": str(path)},
            "data": {"source": "synthetic", "batch_size": batch},
            "dynamics": dyn, "integrator": {"scheme": scheme, "dt": dt, "steps": n},
            "record": {"every": n, "variables": ["h", "err"], "samples": "all"}}


def em_variance(sigma, tau, dt):
    return sigma ** 2 * tau / (2 - dt / tau)


def heun_variance(sigma, tau, dt):
    a = dt / tau
    return sigma ** 2 * dt * (1 - a / 2) ** 2 / (1 - (1 - a + a * a / 2) ** 2)


@pytest.mark.parametrize("scheme,pop", [("euler", "h"), ("semi_implicit", "h"), ("heun", "h"),
                                        ("semi_implicit", "e")])
def test_ou_stationary_variance(tmp_path, scheme, pop):
    """The sample variance over 20000 independent neurons (the batch: one input each, its own
    noise) after 8 tau (the transient's share of the variance, (1 - a)^(2 n) ~ e^-16, is
    negligible). Its SE is var sqrt(2 / (n - 1)) = 1.0 %. Tolerances: the scheme's exact
    discrete variance within 4 SE; the continuous sigma^2 tau / 2 within 4 SE plus the
    discretisation bias (0.5 % for Euler-Maruyama at dt/tau = 0.01, ~1e-5 for Heun). Seen with
    seed 0: 1.2 SE from the discrete value for h (euler and semi_implicit give the same
    numbers here), 2.2 SE for e; the draws are fixed by the seed, so this is not flaky."""
    sigma, tau, dt, n = 0.3, 1.0, 0.01, 20000
    ds = ctpc.simulate(ou_config(tmp_path, scheme, pop=pop, sigma=sigma, tau=tau, dt=dt,
                                 batch=n))
    var = "h" if pop == "h" else "err"
    dev = (ds[var].isel(time=-1) - ds[var].isel(time=0)).values.ravel()
    assert dev.shape == (n,)
    got = dev.var(ddof=1)
    discrete = heun_variance(sigma, tau, dt) if scheme == "heun" else em_variance(sigma, tau, dt)
    continuous = sigma ** 2 * tau / 2
    se = discrete * np.sqrt(2 / (n - 1))
    assert abs(got - discrete) < 4 * se, (got, discrete, se)
    assert abs(got - continuous) < 4 * se + abs(discrete - continuous), (got, continuous)
    assert abs(dev.mean()) < 4 * np.sqrt(discrete / n)             # the mean: 0, within 4 SE


# ------------------------------------------------------------------ weak order
WEAK_T, WEAK_B, WEAK_SIGMA = 2.0, 100000, (0.3, 0.2)      # ms, samples, (sigma_h, sigma_lambda)


def weak_config(dt, noisy, batch=WEAK_B):
    n = int(round(WEAK_T / dt))
    return {"dtype": "float64", "device": "cpu", "seed": 2,
            "network": {"width": 2, "depth": 3, "activation": "linear", "input_dim": 3,
                        "output_dim": 2},
            "data": {"source": "synthetic", "batch_size": batch},
            "dynamics": {"method": "pcalm", "tau_h": 1.0, "tau_lambda": 2.0,
                         "noise": {"h": WEAK_SIGMA[0], "lambda": WEAK_SIGMA[1]} if noisy else {}},
            "integrator": {"scheme": "euler", "dt": dt, "steps": n},
            "record": {"every": n, "variables": ["h", "lam"], "samples": "all"}}


def flow_matrix(cfg):
    """A of the affine right-hand side f(S) = A S + c of one sample (the slow obvious way: one
    column per unit vector, f(S0 + e_j) - f(S0); exact for a linear network), state order
    (population, layer, unit)."""
    m = build_model(ctpc.load_config(cfg))
    p = m.params()
    S0 = m.dyn.initial_state(p)
    f0 = m.dyn.rhs(S0, p).reshape(-1)
    n = S0.numel()
    A = np.zeros((n, n))
    for j in range(n):
        S = S0.clone().reshape(-1)
        S[j] += 1.0
        A[:, j] = (m.dyn.rhs(S.view_as(S0), p).reshape(-1) - f0).numpy()
    return A


def test_flow_matrix_is_the_linearisation():
    """The test's own A against the stability study's Jacobian of the same sample."""
    from ctpc.studies.stability import Linearisation
    cfg = weak_config(0.1, False, batch=1)
    lin = Linearisation(ctpc.load_config(cfg))
    J = lin.matrix(lin.rhs_map())                # populations h, lambda: the test's order
    np.testing.assert_allclose(J, flow_matrix(cfg), rtol=0, atol=1e-12)


def test_weak_order_of_euler_maruyama():
    """tr Cov S(T) of Euler-Maruyama (100000 samples; S minus the noise-free Euler run of the
    same network and batch, which for a linear drift is exactly the noise's part) against Van
    Loan's exact value, at dt = 0.4, 0.2, 0.1, 0.05 ms (T = 2 ms, fastest rate 2.2/ms: stable).

    The Monte Carlo SE of tr C is sqrt(2 tr(C^2) / B) ~ 8e-4: 1/14 of the discretisation error
    at the smallest dt, 1/120 at the largest. Checks, each at 4 SE: every estimate equals the
    scheme's exact discrete value (the recursion C' = M C M^T + dt Q); the fitted log-log slope
    of the error equals the recursion's (its SE propagated through the fit: ~0.03). The
    recursion's own slope over these dt is 1.13 (the dt^2 term at dt = 0.4; checked within 0.15
    of 1) and within 0.05 of 1 between the two finest (weak order 1); so the measured slope is
    1 within 0.15 + 4 SE (seen: 1.144, SE 0.031)."""
    dts = np.array([0.4, 0.2, 0.1, 0.05])
    A = flow_matrix(weak_config(0.1, False, batch=1))
    n = A.shape[0]
    half = n // 2                                       # (h, lambda) x (layers x units)
    Q = np.diag([WEAK_SIGMA[0] ** 2] * half + [WEAK_SIGMA[1] ** 2] * half)
    vl = scipy.linalg.expm(np.block([[-A, Q], [np.zeros_like(A), A.T]]) * WEAK_T)
    exact = np.trace(vl[n:, n:].T @ vl[:n, n:])
    measured, discrete, ses = [], [], []
    for dt in dts:
        noisy, det = ctpc.simulate(weak_config(dt, True)), ctpc.simulate(weak_config(dt, False))
        D = np.concatenate([(noisy[v] - det[v]).isel(time=-1).transpose("sample", "layer", "unit")
                            .values.reshape(WEAK_B, -1) for v in ("h", "lam")], axis=1)
        C, M = np.zeros((n, n)), np.eye(n) + dt * A
        for _ in range(int(round(WEAK_T / dt))):
            C = M @ C @ M.T + dt * Q
        measured.append(np.trace(D.T @ D) / WEAK_B)
        discrete.append(np.trace(C))
        ses.append(np.sqrt(2 * np.sum(C * C) / WEAK_B))
    measured, discrete, ses = map(np.array, (measured, discrete, ses))
    assert np.all(np.abs(measured - discrete) < 4 * ses), (measured, discrete, ses)
    x = np.log(dts)
    fit = lambda err: np.polyfit(x, np.log(err), 1)[0]
    slope, slope_discrete = fit(measured - exact), fit(discrete - exact)
    w = (x - x.mean()) / np.sum((x - x.mean()) ** 2)           # d slope / d log(error_i)
    slope_se = np.sqrt(np.sum((w * ses / (discrete - exact)) ** 2))
    assert abs(slope - slope_discrete) < 4 * slope_se, (slope, slope_discrete, slope_se)
    assert slope_discrete == pytest.approx(1.0, abs=0.15)
    assert fit_pair(dts[-2:], discrete[-2:] - exact) == pytest.approx(1.0, abs=0.05)
    assert slope == pytest.approx(1.0, abs=0.15 + 4 * slope_se), slope
    print(f"weak order: slope {slope:.3f} (recursion {slope_discrete:.3f}, SE {slope_se:.3f}); "
          f"errors {np.round(measured - exact, 4)}")


def fit_pair(dts, errors):
    return float(np.log(errors[0] / errors[1]) / np.log(dts[0] / dts[1]))


# ------------------------------------------------------------------ replicas, seeds, replay
def small(seed=0, scheme="semi_implicit", noise=None, steps=60, check_every=None, tau_e=0.0,
          act="tanh"):
    cfg = {"dtype": "float64", "device": "cpu", "seed": seed,
           "network": {"width": 5, "depth": 4, "activation": act, "input_dim": 4,
                       "output_dim": 3},
           "data": {"source": "synthetic", "batch_size": 3},
           "dynamics": {"method": "pcalm", "tau_h": 2.0, "tau_lambda": 1.5, "tau_e": tau_e,
                        "noise": {"h": 0.2, "lambda": 0.1} if noise is None else noise},
           "integrator": {"scheme": scheme, "dt": 0.1, "steps": steps},
           "record": {"every": 5, "samples": "all"}}
    if check_every is not None:
        cfg["integrator"]["check_every"] = check_every
    return cfg


SCHEMES = ["euler", "heun", "semi_implicit"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_replica_equals_its_own_run(scheme):
    """Two replicas with their own seeds and their own sigma (a [R, 1, 1] sigma), stacked,
    against their single runs: the same noise (tensor sigma multiplies by addcmul, a float one
    by alpha: the last bit may differ)."""
    cfgs = [small(1, scheme), small(4, scheme, noise={"h": 0.05, "lambda": 0.3})]
    stacked = simulate_replicas(cfgs)
    for cfg, got in zip(cfgs, stacked):
        alone = ctpc.simulate(cfg)
        for v in ("h", "lam", "credit"):
            np.testing.assert_allclose(got[v].values, alone[v].values, rtol=1e-12,
                                       atol=1e-14, err_msg=v)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_noise_does_not_depend_on_check_every(scheme):
    runs = [ctpc.simulate(small(scheme=scheme, check_every=k)) for k in (1, 7, 1000)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.h.values, runs[0].h.values)
    det = ctpc.simulate(small(scheme=scheme, noise={}))
    assert float(abs(runs[0].h - det.h).max()) > 0.05          # the noise is there


@pytest.mark.parametrize("scheme", SCHEMES)
def test_divergence_replay_and_freeze_see_the_noise_of_the_run(scheme):
    """Replica 1 (its noise 30x larger) crosses a bound mid-run: integrate, checking every 16
    steps, finds the first step out of bounds as a step-by-step run does, keeps the state
    before it, and replica 0 (frozen replica 1 at dt = 0, restarted carry) goes on with the
    noise of its own single run. (Replica 1's peak grows as its noise accumulates.)"""
    cfgs = [small(1, scheme, steps=80), small(2, scheme, noise={"h": 6.0, "lambda": 0.1},
                                             steps=80)]
    m = build_model([ctpc.load_config(c) for c in cfgs])
    p = m.params()
    solver = make_solver(m.dyn, scheme, noise=m.noise)
    with torch.no_grad():
        c, peaks, states = solver.start(p), [], []
        for _ in range(80):
            c = solver.step(c, p, m.dt)
            S = solver.state(c)
            peaks.append(float(S[:, :, 1].abs().max()))
            states.append(S[:, :, 1].clone())
        # a bound below every later peak and above every earlier one (a noisy state can come
        # back inside the bound; the engine's check, at chunk ends, is for states that grow)
        k = next(j for j in range(20, 75) if max(peaks[:j]) < min(peaks[j:]) and j % 16)
        bound = (max(peaks[:k]) + min(peaks[k:])) / 2
        res = integrate(solver, solver.start(p), p, 80, dt=m.dt, check_every=16,
                        bound=torch.tensor([1e6, bound], dtype=torch.float64))
        assert res.diverged_step == [None, k + 1] and res.steps_completed.tolist() == [80, k]
        torch.testing.assert_close(res.final_state()[:, :, 1], states[k - 1], rtol=0, atol=0)
        one = build_model(ctpc.load_config(cfgs[0]))
        ps = one.params()
        alone = make_solver(one.dyn, scheme, noise=one.noise)
        ref = alone.advance(alone.start(ps), ps, one.dt, 80, True)
        torch.testing.assert_close(res.final_state()[:, :, :1], alone.state(ref),
                                   rtol=1e-12, atol=1e-14)


def test_snapshot_keeps_the_clock_and_the_buffers():
    m = build_model(ctpc.load_config(small()))
    p = m.params()
    solver = make_solver(m.dyn, "semi_implicit", noise=m.noise)
    with torch.no_grad():
        c = solver.advance(solver.start(p), p, m.dt, 5, False)
        snap = solver.snapshot(c)
        on = solver.advance(c, p, m.dt, 20, False)
        a = solver.state(on).clone()
        assert snap.k == 5 and on.k == 25                  # later steps leave the snapshot
        b = solver.state(solver.advance(snap, p, m.dt, 20, False))
    assert torch.equal(a, b)


def test_noise_free_runs_are_the_committed_code():
    """No noise: the deterministic solvers, no Noise object, and the fingerprints the solver
    tests hold since before the interface (tests/test_solver_protocol.py GOLDEN)."""
    cfg = ctpc.load_config(small(noise={}))
    m = build_model(cfg)
    assert m.noise is None and not cfg.dynamics.noise.active
    assert type(make_solver(m.dyn, "semi_implicit", noise=m.noise)) is GaussSeidel
    assert type(make_solver(m.dyn, "euler", noise=m.noise)) is ExplicitRK
    mm = model_of("tanh", (0.3, 0.5), 0.0)
    assert mm.noise is None
    p = mm.params()
    for scheme in ("semi_implicit", "heun"):
        solver = make_solver(mm.dyn, scheme, noise=mm.noise)
        with torch.no_grad():
            c = solver.init(mm.dyn.initial_state(p), p)
            for j in range(5):
                c = solver.step(c, p, mm.dt, last=j == 4)
        assert fingerprint(solver.state(c)) == GOLDEN[f"{scheme}/tanh/dt2"]["steps"]


def test_noisy_solvers_and_the_grouping_key():
    m = build_model(ctpc.load_config(small(tau_e=0.5, noise={"h": 0.1, "e": 0.2})))
    assert isinstance(make_solver(m.dyn, "heun", noise=m.noise), NoisyRK)
    assert isinstance(make_solver(m.dyn, "semi_implicit", noise=m.noise), NoisyGaussSeidel)
    assert m.noise.pops == (0, 2)                      # h and e; lambda has sigma 0
    on, off = ctpc.load_config(small()), ctpc.load_config(small(noise={}))
    other = ctpc.load_config(small(noise={"h": 0.7}))
    assert shape_key(on) != shape_key(off) and shape_key(on) == shape_key(other)


def test_draws_are_a_function_of_seed_stream_and_step():
    """A block is the same whatever was drawn before; another seed, stream or step differs."""
    like = torch.zeros(2, 3, 1, 4, 5, dtype=torch.float64)
    mk = lambda seed, stream=(0,): noise_mod.Noise((0.1, 0.2), (seed,), stream)
    a = mk(3).draws(40, like).clone()
    n = mk(3)
    for k in range(45):
        n.draws(k, like)
    assert torch.equal(n.draws(40, like), a)
    assert not torch.equal(mk(4).draws(40, like), a)
    assert not torch.equal(mk(3, (1, 0)).draws(40, like), a)
    assert not torch.equal(mk(3).draws(41, like), a)


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("sets,needle", [
    (["integrator.scheme=rk4", "dynamics.noise.h=0.1"], "has no stochastic form"),
    (["integrator.scheme=discrete", "dynamics.noise.h=0.1"], "has no stochastic form"),
    (["dynamics.noise.e=0.1"], "needs leaky error neurons"),
    (["dynamics.method=pc", "dynamics.noise.lambda=0.1"], "method 'pc' has none"),
], ids=["rk4", "discrete", "e without tau_e", "lambda with pc"])
def test_refusals_exit_2(sets, needle, tmp_path, capsys):
    from ctpc.cli.simulate import main
    model = tmp_path / "m.yaml"
    model.write_text(yaml.safe_dump(small(noise={}, steps=3)))
    argv = [model, "--out", tmp_path / "o.nc", "--quiet"]
    for s in sets:
        argv += ["--set", s]
    code, err = cli(main, argv, capsys)
    check(code, err, 2, [needle], max_lines=4)


@pytest.mark.parametrize("training,needle", [
    ({"plasticity": "continuous", "tau_w": 5.0}, "plasticity 'continuous' is not built"),
    ({"cuda_graph": True}, "replays the noise of its capture"),
])
def test_training_refusals(training, needle):
    with pytest.raises(ConfigError, match=needle):
        ctpc.load_config({**small(), "training": training}, resolve_files=False)


# ------------------------------------------------------------------ training
TRAIN = ["network.depth=3", "network.width=8", "dtype=float64", "device=cpu",
         "data.train_subset=256", "training.eval_every=null", "training.checkpoint_every=2",
         "integrator.scheme=semi_implicit", "integrator.budget=null", "integrator.steps=6",
         "dynamics.noise.h=0.05", "dynamics.noise.lambda=0.05"]


def test_noisy_training_resumes_bit_for_bit_and_is_not_compiled(tmp_path, capsys):
    from ctpc.cli.train import main
    from test_reliability_resume import MODEL, same_run
    args = lambda out, *extra: [MODEL, "--out", out, "--quiet",
                                *[a for s in [*TRAIN, *extra] for a in ("--set", s)]]
    ext, full, det = tmp_path / "ext.nc", tmp_path / "full.nc", tmp_path / "det.nc"
    assert cli(main, args(ext, "training.max_updates=3"), capsys)[0] == 0
    assert cli(main, [*args(ext, "training.epochs=2"), "--resume"], capsys)[0] == 0
    assert cli(main, args(full, "training.epochs=2"), capsys)[0] == 0
    same_run(full, ext)
    assert cli(main, args(det, "training.epochs=2", "dynamics.noise.h=0",
                          "dynamics.noise.lambda=0"), capsys)[0] == 0
    a, b = ctpc.open_results(full), ctpc.open_results(det)
    assert not np.array_equal(a.train_loss.values, b.train_loss.values)
    cfg = ctpc.load_config(MODEL, [*TRAIN, "integrator.compile=true"], resolve_files=False)
    assert not compilable(cfg, torch.device("cpu"))
