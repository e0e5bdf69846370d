"""ctpc's discrete run equals an independent JAX implementation of the paper's algorithm.

``sims/jax_pcalm.py`` is written the way the paper's authors wrote theirs (jax.jit + lax.scan,
jax.grad of a batch-mean energy with the activity step scaled by B). In float64 its weight
gradients must equal ctpc's ``scheme: discrete`` read-out to round-off for every activation,
PC and PC-ALM, pre_dual and post_dual credit timing. Only ctpc's public interface is used
(``ctpc.simulate`` on .npz weights and data). Skipped when jax is not installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import ctpc  # noqa: E402

SIMS = Path(__file__).resolve().parents[1] / "sims"

D, N, L, O, B = 5, 4, 4, 3, 3
T, ETA, ALPHA, RHO = 6, 0.2, 0.8, 1.3


def _load_jax_pcalm():
    spec = importlib.util.spec_from_file_location("jax_pcalm", SIMS / "jax_pcalm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def jax_pcalm():
    return _load_jax_pcalm()


@pytest.fixture
def x64():
    """Switch jax to float64 for the test, then restore the previous setting."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def problem():
    """Random unscaled weights ([out, in], N(0,1)) and one batch of data."""
    rng = np.random.default_rng(1234)
    shapes = [(N, D)] + [(N, N)] * (L - 2) + [(O, N)]
    weights = [rng.standard_normal(s) for s in shapes]
    x = rng.standard_normal((B, D))
    y = rng.standard_normal((B, O))
    return weights, x, y


def _ctpc_grads(tmp_path, weights, x, y, act, method, timing):
    wpath, dpath = tmp_path / "weights.npz", tmp_path / "data.npz"
    np.savez(wpath, **{f"w{i}": w for i, w in enumerate(weights, start=1)})
    np.savez(dpath, x=x, y=y)
    ds = ctpc.simulate({
        "dtype": "float64", "device": "cpu",
        "network": {"width": N, "depth": L, "activation": act, "weights": str(wpath)},
        "data": {"source": "npz", "path": str(dpath), "batch_size": B, "shuffle": False},
        "dynamics": {"method": method, "rho": RHO, "state_lr": ETA, "alpha": ALPHA},
        "integrator": {"scheme": "discrete", "dt": 1.0, "budget": T,
                       "weight_credit_timing": timing},
        "record": {"every": T, "variables": []}})
    return [ds[f"grad_w{i}"].values for i in range(1, L + 1)]


@pytest.mark.parametrize("timing", ["pre_dual", "post_dual"])
@pytest.mark.parametrize("method", ["pc", "pcalm"])
@pytest.mark.parametrize("act", ["linear", "tanh", "relu"])
def test_discrete_matches_jax(tmp_path, jax_pcalm, x64, problem, act, method, timing):
    weights, x, y = problem
    expected = _ctpc_grads(tmp_path, weights, x, y, act, method, timing)

    run = jax_pcalm.make_training_step(
        weights, x, y, activation=act, T=T, eta=ETA, alpha=0.0 if method == "pc" else ALPHA,
        rho=RHO, timing=timing, dtype="float64")
    got = [np.asarray(g) for g in run()]

    assert len(got) == len(expected) == L
    for i, (g, e) in enumerate(zip(got, expected), start=1):
        assert g.dtype == np.float64 and g.shape == e.shape == weights[i - 1].shape
        # the comparison only has teeth if the gradients are not tiny
        assert np.abs(e).max() > 1e-3, f"W_{i}: ctpc gradient too small to compare"
        assert np.abs(g).max() > 1e-3, f"W_{i}: JAX gradient too small to compare"
        err = np.abs(g - e).max()
        assert err <= 1e-12, f"W_{i}: max |jax - ctpc| = {err:.3e}"
