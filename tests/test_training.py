"""ctpc.train end to end: every method learns on digits, PC-ALM's credit reaches the input
layers where PC's does not, the training dataset and weights file, resume after a real SIGKILL
is bit-identical, divergence is a result (exit 3), bad input is exit 2."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import ctpc
from ctpc.config.paths import companion_path
from ctpc.cli.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "models" / "train_digits.yaml")
QUICK = ["network.depth=4", "network.width=16", "training.epochs=5", "training.lr=0.01",
         "training.eval_every=null"]


@pytest.mark.parametrize("method", ["bp", "pc", "pcalm"])
def test_every_method_learns_on_digits(method):
    ds = ctpc.train(MODEL, QUICK + [f"dynamics.method={method}"])
    assert ds.attrs["status"] == "ok" and ds.attrs["method"] == method
    # 110 updates of batch 64 on 1437 digits. Before any update the network guesses: chance
    # is 0.1 on 10 balanced classes, and 0.3 is three times chance. After 110 updates it must
    # classify most test digits: more than half right (seen: 0.74 .. 0.79 for all three).
    assert float(ds.test_acc[0]) < 0.3
    assert float(ds.test_acc[-1]) > 0.5
    assert float(ds.train_loss[-10:].mean()) < float(ds.train_loss[:10].mean())
    if method == "bp":
        np.testing.assert_allclose(ds.bp_cos.values, 1.0, atol=1e-5)   # BP's update is BP's


def test_pcalm_credit_reaches_the_input_layers_pc_does_not():
    """N = 8, L = 32, T = 2L: PC-ALM's per-layer cosine near the input (W_1 .. W_4) beats PC's,
    whose diffusive credit has not arrived there within the budget."""
    cos = {}
    for method in ("pc", "pcalm"):
        ds = ctpc.train(MODEL, [f"dynamics.method={method}", "network.depth=32",
                                "network.width=8", "training.max_updates=3",
                                "training.eval_every=null"])
        cos[method] = ds.bp_cos.isel(eval=-1).sel(weight=[1, 2, 3, 4]).values
    # seen (digits train split, seed 0, the paper's step rule): PC-ALM 0.88-0.89 at W_1..W_4;
    # PC 0, 0.03, 0.49, 0.84 (0, 0, 0.43, 0.71 with the exact, smaller step): its credit has
    # not reached W_1, W_2 within T = 2L
    assert (cos["pcalm"] > 0.8).all(), cos
    assert (cos["pc"][:2] < 0.1).all(), cos
    assert (cos["pcalm"][:3] > cos["pc"][:3] + 0.3).all(), cos


def test_dataset_schema_and_weights_file(tmp_path):
    out = tmp_path / "run.nc"
    assert train_main([MODEL, "--out", str(out), "--quiet", "--set", "training.max_updates=30",
                       "--set", "training.eval_every=10", "--set", "network.depth=4"]) == 0
    ds = ctpc.open_results(out)
    assert ds.attrs["kind"] == "training" and ds.attrs["status"] == "ok"
    assert ds.sizes["update"] == 30 and list(ds.eval_update.values) == [0, 10, 20, 22, 30]
    for v in ("train_loss", "grad_norm", "weight_norm", "energy"):
        assert ds[v].dims == ("update",) and np.isfinite(ds[v]).all()
    for v in ("res_norm", "lam_norm", "credit_norm"):
        assert ds[v].dims == ("update", "layer")
    for v in ("train_acc", "test_acc", "train_mse", "test_mse", "train_ce", "test_ce",
              "bp_cos_global"):
        assert ds[v].dims == ("eval",) and "long_name" in ds[v].attrs
    assert ds.bp_cos.dims == ("eval", "weight") and ds.sizes["weight"] == 4
    for key in ("lr", "eta_h", "config", "samples_per_s", "wall_time_s", "Conventions"):
        assert key in ds.attrs
    assert ds.attrs["lr"] == pytest.approx(1e-3 * np.sqrt(16 / 4))     # lr: auto
    cfg = ctpc.load_config(yaml.safe_load(ds.attrs["config"]))
    assert cfg.training.max_updates == 30 and cfg.integrator.budget == 8    # budget: auto = 2L
    # the weights file loads back as network.weights and reproduces the trained network
    weights = companion_path(tmp_path / "run.nc", "weights")     # run.weights.npz
    again = ctpc.train(MODEL, ["network.depth=4", f"network.weights={weights}",
                               "training.max_updates=1", "training.eval_every=null"])
    assert float(again.test_acc[0]) == pytest.approx(float(ds.test_acc[-1]))


def _uninterrupted_and_resumed(tmp_path, argv_extra):
    common = [MODEL, "--quiet", "--set", "training.epochs=20", "--set",
              "training.checkpoint_every=25", "--set", "training.eval_every=50"] + argv_extra
    full = tmp_path / "full.nc"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    run = lambda out, *more: [sys.executable, "-m", "ctpc.train", *common, "--out", str(out),
                              *more]
    subprocess.run(run(full), env=env, check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed.nc"
    ckpt = companion_path(killed, "checkpoint")
    proc = subprocess.Popen(run(killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint appeared: {proc.communicate()[1]}")
        time.sleep(0.01)
    time.sleep(0.3)                       # let it get past the first checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed.exists()            # the run was really cut short
    resumed = subprocess.run(run(killed, "--resume"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    return ctpc.open_results(full), ctpc.open_results(killed), full, killed


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    a, b, full, killed = _uninterrupted_and_resumed(tmp_path, ["--set", "network.depth=6"])
    assert a.attrs["status"] == b.attrs["status"] == "ok"
    for v in a.data_vars:
        if v != "eval_wall_time":
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    wa = np.load(companion_path(full, "weights"))
    wb = np.load(companion_path(killed, "weights"))
    for k in wa.files:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_resume_refuses_another_configuration(tmp_path, capsys):
    out = tmp_path / "r.nc"
    base = [MODEL, "--out", str(out), "--quiet", "--set", "training.max_updates=4",
            "--set", "network.depth=4", "--set", "training.checkpoint_every=2"]
    assert train_main(base) == 0
    assert train_main(base + ["--set", "seed=1", "--resume"]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_divergence_is_a_result(tmp_path, capsys):
    """A huge learning rate: the loss or the weights become non-finite. Exit 3, the history up
    to then and the last good checkpoint are kept, no weights file for the broken network."""
    out = tmp_path / "div.nc"
    code = train_main([MODEL, "--out", str(out), "--quiet", "--set", "network.depth=4",
                       "--set", "training.optimizer=sgd", "--set", "training.lr=1e6",
                       "--set", "training.momentum=0.0", "--set", "training.max_updates=40",
                       "--set", "training.checkpoint_every=1"])
    assert code == 3
    assert "DIVERGED" in capsys.readouterr().err
    ds = ctpc.open_results(out)
    u = ds.attrs["diverged_at_update"]
    assert ds.attrs["status"] == "diverged" and 1 <= u <= 40
    assert np.isfinite(ds.train_loss.values[:u - 1]).all()
    assert not np.isfinite(ds.train_loss.values[u:]).any()
    assert not companion_path(out, "weights").exists()
    assert companion_path(out, "checkpoint").exists() or u == 1


BAD = [
    (["dynamics.method=bp", "training.plasticity=continuous", "training.tau_w=5"], "bp"),
    (["training.plasticity=continuous"], "training.tau_w"),
    (["training.tau_w=5"], "plasticity 'continuous' only"),
    (["training.momentum=0.5"], "optimizer 'sgd' only"),
    (["training.lr=0"], "training.lr"),
    (["training.lr=-1"], "training.lr"),
    (["training.lr=.inf"], "training.lr"),
    (["training.epochs=0"], "training.epochs"),
    (["training.optimizer=rmsprop"], "training.optimizer"),
    (["data.source=synthetic", "network.input_dim=4", "network.output_dim=3"],
     "no train/test split"),
    (["backend=brian2", "integrator.scheme=euler", "integrator.steps=4",
      "integrator.budget=null", "dynamics.state_lr=null", "dynamics.alpha=null"], "backend"),
    (["training.probe_size=100000"], "training.probe_size"),
    (["data.batch_size=5000"], "data.batch_size"),
    (["training.max_updates=0"], "training.max_updates"),
    (["integrator.budget=0"], "integrator.budget"),
    (["integrator.budget=lots"], "integrator.budget"),
]


@pytest.mark.parametrize("overrides,needle", BAD, ids=[b[0][0] for b in BAD])
def test_bad_training_input(overrides, needle, tmp_path, capsys):
    argv = [MODEL, "--out", str(tmp_path / "x.nc"), "--quiet"]
    for o in overrides:
        argv += ["--set", o]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not (tmp_path / "x.nc").exists()


def test_simulate_refuses_bp(capsys):
    from ctpc.cli.simulate import main
    assert main([str(ROOT / "models" / "pcalm_deep.yaml"), "--set", "dynamics.method=bp"]) == 2
    assert "ctpc.train" in capsys.readouterr().err
