"""Brian2's half of the biological constraints: noisy neurons (an Ornstein-Uhlenbeck check of the
generated stochastic equations) and spiking error neurons (brian2.errors: spiking): the dataset's
ragged spike arrays, the firing-rate formula, and the limit r_max -> inf, where the spiking
network's read-out converges to the leaky-error rate model's. numpy target, float64, seeded."""
import numpy as np
import pytest

import ctpc
from conftest import small_config

brian2 = pytest.importorskip("brian2")
from ctpc.results.spikes import firing_rates, spike_counts, spike_trains  # noqa: E402
from ctpc.sim.backends import brian2_backend  # noqa: E402


# ----------------------------------------------------------------------------- noise
def ou_config(tmp_path, scheme: str, sigma: float, tau_h: float, dt: float, steps: int,
              every: int, batch: int) -> dict:
    """One linear neuron per sample (width 1, depth 2, PC, instantaneous errors) with output
    weight 0: no feedback, so dh/dt = -(h - drive)/tau_h + sigma xi, drive = s_in W_1 x (rho = 1).
    The batch is ``batch`` independent copies; err = h - drive is the OU process itself."""
    weights = tmp_path / "ou.npz"
    np.savez(weights, w1=np.ones((1, 2)), w2=np.zeros((1, 1)))
    return small_config(
        backend="brian2",
        network={"width": 1, "depth": 2, "activation": "linear", "input_dim": 2,
                 "output_dim": 1, "weights": str(weights)},
        data={"source": "synthetic", "batch_size": batch},
        dynamics={"method": "pc", "tau_h": tau_h, "tau_e": 0.0, "noise": {"h": sigma}},
        integrator={"scheme": scheme, "dt": dt, "steps": steps},
        record={"every": every, "samples": "all", "variables": ["err"]})


@pytest.mark.filterwarnings("ignore:brian2. summed variables")   # heun's first-order note
@pytest.mark.parametrize("scheme", ["euler", "semi_implicit", "heun"])
def test_ornstein_uhlenbeck_stationary_variance(scheme, tmp_path):
    """Stationary variance of the Euler-Maruyama OU chain x' = (1 - a) x + sigma sqrt(dt) Z,
    a = dt/tau: sigma^2 tau / (2 - a) (continuous: sigma^2 tau / 2, 5.3 % lower at a = 0.1).
    semi_implicit's h step is the same Euler-Maruyama step, and Brian2's stochastic heun is
    Euler-Maruyama for additive noise, so all three share the formula.

    Samples: 4000 neurons x 11 records 5 tau apart, after a burn-in of 10 tau (the variance is
    then within (1 - a)^200 = 7e-10 of stationary); successive records of a neuron correlate by
    (1 - a)^50 = 5e-3 (their squares by 3e-5), so the n = 44000 values are independent for this
    purpose. Tolerance: 5 standard errors of a Gaussian sample variance, var sqrt(2 / (n - 1))
    (3.4 %), which still tells the scheme's variance from the continuous one (7.8 SE apart)."""
    sigma, tau, dt = 0.5, 1.0, 0.1
    ds = ctpc.simulate(ou_config(tmp_path, scheme, sigma, tau, dt, steps=600, every=50,
                                 batch=4000))
    x = ds.err.sel(layer=1, unit=0).where(ds.time >= 10 * tau, drop=True).values
    assert x.shape == (11, 4000)
    n = x.size
    var = float(np.mean(x ** 2))          # the mean is 0 (checked next): n degrees of freedom
    a = dt / tau
    exact = sigma ** 2 * tau / (2 - a)
    se = exact * np.sqrt(2 / (n - 1))
    assert abs(var - exact) < 5 * se, (var, exact, se)
    # the OU law sigma^2 tau / 2, within the same sampling tolerance plus the scheme's stated
    # O(dt) bias (exact - continuous = sigma^2 tau a / (2 (2 - a)))
    continuous = sigma ** 2 * tau / 2
    assert abs(var - continuous) < 5 * se + (exact - continuous), (var, continuous)
    assert abs(var - continuous) > 3 * se          # the discretisation is visible
    assert abs(float(x.mean())) < 5 * np.sqrt(exact / n)
    assert "brian2_random" in ds.attrs


def test_noise_is_seeded_and_reaches_every_population():
    """PC-ALM with noise on h, e and lambda, both schedules: a rerun with the same seed gives the
    same numbers, another seed others; the equations carry xi (explicit) or randn (Gauss-Seidel)."""
    for scheme in ("euler", "semi_implicit"):
        cfg = small_config(backend="brian2", network={"depth": 3},
                           dynamics={"method": "pcalm", "tau_h": 2.0, "tau_lambda": 2.0,
                                     "tau_e": 1.0, "noise": {"h": 0.05, "e": 0.05,
                                                             "lambda": 0.05}},
                           integrator={"scheme": scheme, "dt": 0.25, "steps": 20},
                           record={"every": 20})
        text = brian2_backend.equations_text(ctpc.load_config(cfg))
        noisy = ("xi_h", "xi_e", "xi_lambda") if scheme == "euler" else (
            "xi_h", "sigma_e * sqrt(dt) * randn()", "sigma_lambda * sqrt(dt) * randn()")
        assert all(piece in text for piece in noisy), text
        a, b = ctpc.simulate(cfg), ctpc.simulate(cfg)
        c = ctpc.simulate({**cfg, "seed": 1})
        for v in ("h", "lam", "err"):
            np.testing.assert_array_equal(a[v].values, b[v].values)
        assert np.abs(a.lam.values - c.lam.values).max() > 1e-4


def test_noise_free_equations_have_no_noise_terms():
    cfg = ctpc.load_config(small_config(backend="brian2", integrator={"scheme": "euler"},
                                        dynamics={"tau_e": 0.5}))
    spec = brian2_backend.model_spec(cfg)
    assert not spec.noisy and not spec.spiking
    assert "xi" not in spec.layer_equations and "randn" not in brian2_backend.equations_text(cfg)


# ----------------------------------------------------------------------------- spiking
def spiking_config(**sections) -> dict:
    base = dict(backend="brian2",
                network={"depth": 3, "width": 4, "activation": "linear"},
                dynamics={"method": "pcalm", "tau_e": 1.0, "tau_h": 2.0, "tau_lambda": 2.0},
                integrator={"scheme": "euler", "dt": 0.1, "steps": 100},
                record={"every": 10, "samples": [1, 2], "units": [0, 3]},
                brian2={"errors": "spiking", "r_max": 5000.0, "e_max": 0.5})
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return small_config(**base)


@pytest.mark.parametrize("scheme", ["euler", "semi_implicit"])
def test_spiking_run_writes_and_reads_spikes(scheme, tmp_path):
    cfg = spiking_config(integrator={"scheme": scheme})
    ctpc.simulate(cfg, out=tmp_path / "s.nc")
    ds = ctpc.open_results(tmp_path / "s.nc")
    assert ds.attrs["brian2_errors"] == "spiking" and ds.attrs["status"] == "ok"
    # CF contiguous ragged array: one neuron per recorded (layer, sign, sample, unit)
    assert ds.spike_count.attrs["sample_dimension"] == "spike"
    assert ds.spike_neuron.attrs["cf_role"] == "timeseries_id"
    assert ds.sizes["spike_neuron"] == 2 * 2 * 2 * 2
    assert int(ds.spike_count.sum()) == ds.sizes["spike"] > 0
    trains = spike_trains(ds)
    assert {k[2] for k in trains} == {1, 2} and {k[3] for k in trains} == {0, 3}
    assert {k[1] for k in trains} == {1, -1} and {k[0] for k in trains} == {1, 2}
    end = ds.attrs["n_steps"] * ds.attrs["dt"]
    for times in trains.values():
        assert np.all(np.diff(times) > 0) and (times.size == 0 or 0 <= times[0] <= times[-1] < end)
    assert sum(t.size for t in spike_trains(ds, layer=2, sign=-1).values()) == int(
        ds.spike_count.where((ds.spike_layer == 2) & (ds.spike_sign == -1)).sum())
    counts = spike_counts(ds)
    assert counts.dims == ("layer", "sign", "sample", "unit") and counts.sum() == ds.sizes["spike"]
    assert float(firing_rates(ds).max()) <= 5000.0
    # the decoded error is a leaky state variable: the dataset is the rate model's schema
    assert ds.err.dims == ("time", "layer", "sample", "unit")
    rate = ctpc.simulate({**cfg, "brian2": {"errors": "rate"}})
    assert "spike_count" not in rate and set(rate.data_vars) < set(ds.data_vars)


def test_spiking_refusals():
    for sections, hint in [({"dynamics": {"tau_e": 0.0}}, "tau_e > 0"),
                           ({"integrator": {"scheme": "heun"}}, "euler or semi_implicit"),
                           ({"integrator": {"dt": 1.0}}, "fires at most once per step"),
                           ({"backend": "torch"}, "Brian2 model"),
                           ({"brian2": {"construction": "network_operation"}}, "construction"),
                           ({"brian2": {"target": "cpp_standalone"}}, "runtime targets")]:
        cfg = spiking_config(**{k: v for k, v in sections.items() if k != "backend"})
        if "backend" in sections:
            cfg["backend"] = "torch"
        with pytest.raises(ctpc.ConfigError, match=hint):
            ctpc.load_config(cfg)


def test_spike_count_matches_the_rate_formula(tmp_path):
    """One hidden unit per sample, h held (tau_h = 1e9 ms) at known residuals r: each error
    neuron fires with probability p = r_max dt min(1, [+-r]_+ / e_max) per step, so its count
    over n steps is Binomial(n, p); bound: 5 standard deviations sqrt(n p (1 - p)) (+ 0.5 for
    p = 0). The decoded error's time average (after 10 tau_e) is clip(r, +-e_max) within 5
    standard errors of the shot noise (variance e_max |r| / (2 r_max tau_e), correlation time
    tau_e: about T / (2 tau_e) independent values)."""
    r = np.array([-2.0, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.5])     # in units of e_max
    e_max, r_max, dt, n = 0.5, 5000.0, 0.1, 2000
    weights = tmp_path / "w.npz"
    np.savez(weights, w1=np.ones((1, 2)), w2=np.zeros((1, 1)))
    cfg = small_config(backend="brian2",
                       network={"width": 1, "depth": 2, "activation": "linear", "input_dim": 2,
                                "output_dim": 1, "weights": str(weights)},
                       data={"source": "synthetic", "batch_size": r.size},
                       dynamics={"method": "pc", "tau_h": 1e9, "tau_e": 1.0},
                       integrator={"scheme": "euler", "dt": dt, "steps": n},
                       brian2={"errors": "spiking", "r_max": r_max, "e_max": e_max})
    bn = brian2_backend.build(cfg)
    layer = bn.layers[0]
    layer.h = layer.pred[:] + r * e_max
    mons = {s: brian2.SpikeMonitor(bn.error_groups[f"layer_1_err_{s}"]) for s in ("pos", "neg")}
    err = brian2.StateMonitor(layer, "err", record=True, when="before_groups", order=3)
    bn.net.add(*mons.values(), err)
    brian2.seed(3)
    bn.net.run(n * dt * brian2.ms, namespace=bn.namespace)
    np.testing.assert_allclose(layer.h[:] - layer.pred[:], r * e_max, atol=1e-6)  # held
    for sign, mon in ((1, mons["pos"]), (-1, mons["neg"])):
        p = r_max * 1e-3 * dt * np.clip(sign * r, 0, 1)
        expected, sd = n * p, np.sqrt(n * p * (1 - p))
        assert np.all(np.abs(mon.count[:] - expected) <= 5 * sd + 0.5), (sign, mon.count[:],
                                                                          expected)
    tau_e = 1.0
    late = np.asarray(err.t / brian2.ms) >= 10 * tau_e
    mean = np.asarray(err.err)[:, late].mean(axis=1)
    target = np.clip(r, -1, 1) * e_max
    n_ind = late.sum() * dt / (2 * tau_e)
    se = np.sqrt(e_max * np.abs(target) / (2 * r_max * 1e-3 * tau_e) / n_ind)
    # the decoded error lags r by the Euler decay: its mean is exactly clip(r) (see equations)
    assert np.all(np.abs(mean - target) <= 5 * se + 1e-12), (mean, target, se)


def test_spiking_limit_converges_to_the_rate_model():
    """As r_max grows (1, 10, 100 kHz at dt = 0.01 ms) the final read-out of a linear PC-ALM
    network with spiking error neurons approaches the leaky-error rate model's. Shot noise of
    variance e_max |r| / (2 r_max tau_e) predicts an error ~ r_max^-1/2, a factor sqrt(10) = 3.2
    per decade (measured 7.4 and 2.9); the test asks for a factor 2 per decade, and at 100 kHz a
    cosine above 0.99 with the rate read-out (a relative error below ~0.14; measured 0.066)."""
    from ctpc.studies.spiking import spiking_limit
    ds = spiking_limit(r_maxes=[1e3, 1e4, 1e5], activations=["linear"], small=True)
    rel = ds.rate_relerr.sel(activation="linear", weight=0).values
    assert np.all(rel[1:] < rel[:-1] / 2), rel
    assert float(ds.rate_cos.sel(activation="linear", weight=0)[-1]) > 0.99
    assert (ds.spikes.values > 0).all() and (ds.wall_time_s.values > 0).all()
