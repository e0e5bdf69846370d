"""R networks of the same shape run as one tensor program, and each replica's results equal a
separate run of it to round-off (float64): simulation (every scheme, with per-replica seed,
method, rates and dt, and per-replica divergence), training (PC/PC-ALM mixes, BP), and a sweep
grouped into replicas against the same sweep cell by cell."""
import numpy as np
import pytest

import ctpc
from ctpc.sim.simulation import simulate_replicas
from ctpc.config.paths import companion_path
from ctpc.training import train_replicas, prepare_config
from ctpc.sweep import run_sweep

from conftest import small_config

TOL = 1e-12      # float64 round-off of a different batching of the same products: ~1e-16

VARIED = [   # what replicas of one program may differ in
    {"seed": 0, "dynamics": {"method": "pcalm", "tau_h": 4.0, "tau_lambda": 1.0, "rho": 1.0}},
    {"seed": 1, "dynamics": {"method": "pc", "tau_h": 3.0, "rho": 1.5}},
    {"seed": 2, "dynamics": {"method": "pcalm", "tau_h": 5.0, "tau_lambda": 2.0, "rho": 0.7},
     "integrator": {"dt": 0.5}},
]


def variant(scheme, i, **extra):
    v = VARIED[i]
    integ = {"scheme": scheme, "dt": 1.0, "steps": 25, **v.get("integrator", {})}
    return small_config(seed=v["seed"], dynamics=v["dynamics"], integrator=integ, **extra)


def assert_same(a, b, skip=("wall_time_s",)):
    assert a.attrs["status"] == b.attrs["status"]
    for k in ("diverged_at", "steps_completed", "method", "eta_h", "alpha"):
        assert a.attrs.get(k) == b.attrs.get(k), k
    for v in a.data_vars:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=TOL, atol=TOL, err_msg=v)
    np.testing.assert_array_equal(a.time.values, b.time.values)


@pytest.mark.parametrize("scheme", ["discrete", "semi_implicit", "euler", "rk4"])
def test_simulate_replicas_equal_separate_runs(scheme):
    cfgs = [variant(scheme, i) for i in range(3)]
    if scheme == "discrete":      # the paper's parameterisation: state_lr and alpha vary
        for c, (eta, a) in zip(cfgs, [(0.25, 1.0), (0.2, 0.0), (0.3, 0.5)]):
            c["dynamics"] = {"method": "pcalm", "state_lr": eta, "alpha": a}
            c["integrator"] = {"scheme": "discrete", "dt": 1.0, "budget": 25}
    together = simulate_replicas(cfgs)
    for cfg, ds in zip(cfgs, together):
        assert_same(ds, ctpc.simulate(cfg))


def test_a_diverged_replica_is_frozen_and_the_others_go_on():
    cfgs = [variant("euler", i) for i in range(3)]
    for c in cfgs:
        c["integrator"]["steps"] = 150
    bad = cfgs[1]      # explicit Euler is unstable for dt > rho tau_lambda (spec 5.2)
    bad["integrator"]["dt"] = 2.5
    bad["dynamics"] = {"method": "pcalm", "tau_h": 10.0, "tau_lambda": 1.0}
    together = simulate_replicas(cfgs)
    assert [d.attrs["status"] for d in together] == ["ok", "diverged", "ok"]
    assert together[1].attrs["steps_completed"] < 150
    for cfg, ds in zip(cfgs, together):
        assert_same(ds, ctpc.simulate(cfg))


TRAIN = {"data": {"source": "digits", "batch_size": 16, "train_subset": 320,
                  "test_subset": 100},
         "network": {"width": 6, "depth": 4, "activation": "tanh", "input_dim": None,
                     "output_dim": None},
         "integrator": {"scheme": "discrete", "dt": 1.0, "budget": "auto", "steps": None},
         "training": {"max_updates": 12, "eval_every": 5, "lr": 0.01,
                      "checkpoint_every": None}}


def train_cfg(method, seed, dyn=None):
    return small_config(**TRAIN, seed=seed, dynamics={"method": method, **(dyn or {})})


def assert_same_training(a, b):
    assert a.attrs["status"] == b.attrs["status"]
    for v in a.data_vars:
        if v != "eval_wall_time":
            np.testing.assert_allclose(a[v].values, b[v].values, rtol=TOL, atol=TOL, err_msg=v)


def test_train_replicas_equal_separate_runs():
    cfgs = [train_cfg("pcalm", 0, {"state_lr": 0.25, "alpha": 1.0}),
            train_cfg("pc", 1, {"state_lr": 0.2}),
            train_cfg("pcalm", 2, {"state_lr": "auto", "alpha": 0.5, "rho": 1.5})]
    together = train_replicas([prepare_config(c) for c in cfgs])
    for cfg, (ds, weights) in zip(cfgs, together):
        alone = ctpc.train(cfg)
        assert_same_training(ds, alone)
        assert float(ds.test_acc[-1]) > 0      # it trained


def test_bp_replicas_are_one_autograd_program():
    cfgs = [train_cfg("bp", s) for s in range(3)]
    together = train_replicas([prepare_config(c) for c in cfgs])
    for cfg, (ds, _) in zip(cfgs, together):
        assert_same_training(ds, ctpc.train(cfg))


def test_a_diverging_training_replica_is_frozen():
    good = train_cfg("pcalm", 0, {"state_lr": 0.25, "alpha": 1.0})
    # an activity step so large that inference overflows to inf within its budget of 8 steps
    # (Adam would absorb any finite blow-up: its steps are normalised)
    bad = train_cfg("pcalm", 1, {"state_lr": 1e40, "alpha": 1.0})
    (g, _), (b, _) = train_replicas([prepare_config(good), prepare_config(bad)])
    assert g.attrs["status"] == "ok" and b.attrs["status"] == "diverged"
    assert_same_training(g, ctpc.train(good))
    alone = ctpc.train(bad)
    assert alone.attrs["diverged_at_update"] == b.attrs["diverged_at_update"]


def test_grouped_sweep_equals_cell_by_cell(tmp_path):
    raw = small_config(**TRAIN, name="grid")
    raw["training"]["max_updates"] = 6
    raw["sweep"] = {"dynamics.method": ["bp", "pc", "pcalm"], "seed": [0, 1]}
    raw["dynamics"] = {"state_lr": "auto", "alpha": 1.0}
    grouped = run_sweep(raw, out=tmp_path / "g.nc", n_workers=1, progress=False)
    single = run_sweep(raw, out=tmp_path / "s.nc", n_workers=1, progress=False, group=False)
    assert grouped.attrs["cell_kind"] == "training"
    assert (grouped.status == "ok").all()
    for v in ("train_loss", "test_acc", "bp_cos", "final_test_acc", "res_norm"):
        np.testing.assert_allclose(grouped[v].values, single[v].values, rtol=0, atol=TOL,
                                   err_msg=v)
    assert grouped.train_loss.dims == ("dynamics.method", "seed", "update")
    # each training cell wrote its weights beside its file
    cells = list(companion_path(tmp_path / "g.nc", "cells").glob("*.weights.npz"))
    assert len(cells) == 6
