"""End to end: the CLI on every shipped model, the file round-trips with its schema, bad input
gives the promised messages and exit codes, divergence is a result."""
import glob
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import ctpc
from ctpc.cli.simulate import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted(glob.glob(str(ROOT / "models" / "*.yaml")))
# Shrink every shipped model so the whole set runs in seconds; the full-size runs are the
# README's job and the benchmark's.
SMALL = ["network.depth=4", "network.width=8", "data.batch_size=8", "record.every=2"]


def small_overrides(model):
    raw = yaml.safe_load(Path(model).read_text())
    scheme = raw["integrator"].get("scheme")
    length = "integrator.budget=6" if scheme == "discrete" else (
        "integrator.t_end=6" if "t_end" in raw["integrator"] else "integrator.steps=6")
    samples = ["record.samples=[0]"]
    return SMALL + [length] + samples


def test_models_exist():
    names = {Path(m).stem for m in MODELS}
    assert "pcalm_deep" in names and len(names) >= 4


@pytest.mark.parametrize("model", MODELS, ids=lambda m: Path(m).stem)
def test_cli_runs_every_model(model, tmp_path, mnist_files, capsys):
    out = tmp_path / "run.nc"
    args = [model, "--out", str(out), "--device", "cpu"]
    for o in small_overrides(model):
        args += ["--set", o]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "status: ok" in printed and "bp_cos(W_l)" in printed
    ds = ctpc.open_results(out)
    check_schema(ds)
    assert ds.attrs["status"] == "ok"
    cfg = ctpc.load_config(yaml.safe_load(ds.attrs["config"]))   # stored config re-validates
    assert cfg.network.depth == 4


def check_schema(ds):
    L = ds.sizes["weight"]
    assert list(ds.layer.values) == list(range(1, L))
    assert list(ds.weight.values) == list(range(1, L + 1))
    for v in ("h", "lam", "err", "credit"):
        assert ds[v].dims == ("time", "layer", "sample", "unit")
        assert ds[v].attrs["long_name"] and ds[v].attrs.get("units") != "1"   # dimensionless
    for v in ("err_norm", "lam_norm", "credit_norm", "res_norm"):
        assert ds[v].dims == ("time", "layer")
    assert ds.bp_cos.dims == ("time", "weight") and ds.energy.dims == ("time",)
    assert ds.time.attrs["units"] == "ms" and "step" in ds.coords
    for i in range(1, L + 1):
        assert ds[f"grad_w{i}"].shape == ds[f"bp_grad_w{i}"].shape
        assert ds[f"grad_w{i}"].ndim == 2
    assert ds[f"grad_w{L}"].dims == ("output", "pre_unit")
    assert ds.grad_w1.dims == ("post_unit", "input")
    for key in ("Conventions", "history", "config", "ctpc_version", "backend", "scheme", "dt",
                "status"):
        assert key in ds.attrs, key
    assert int(ds.step[-1]) == ds.attrs["n_steps"]          # final state always recorded


def test_python_module_entry_point(tmp_path):
    """`python -m ctpc.simulate` as a user types it (a subprocess, progress bar and all)."""
    out = tmp_path / "deep.nc"
    cmd = [sys.executable, "-m", "ctpc.simulate", str(ROOT / "models" / "pcalm_deep.yaml"),
           "--out", str(out), "--set", "integrator.steps=4", "--set", "network.depth=3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "status: ok" in proc.stdout
    assert not list(tmp_path.glob("*.tmp-*"))


def test_api_matches_file(tmp_path):
    cfg = ctpc.load_config(MODELS[0], small_overrides(MODELS[0]))
    out = tmp_path / "a.nc"
    ds = ctpc.simulate(cfg, out=out)
    back = ctpc.open_results(out)
    for v in ("h", "bp_cos", "grad_w1"):
        np.testing.assert_array_equal(ds[v].values, back[v].values)
    assert callable(ctpc.simulate)


def test_layer_subset_is_nan_elsewhere(tmp_path, small):
    ds = ctpc.simulate(small(record={"layers": [2, 4], "samples": [1], "units": [0, 3]}),
                       out=tmp_path / "s.nc")
    back = ctpc.open_results(tmp_path / "s.nc")
    assert back.h.sizes == {"time": 21, "layer": 4, "sample": 1, "unit": 2}
    assert np.isnan(back.h.sel(layer=[1, 3]).values).all()
    assert np.isfinite(back.h.sel(layer=[2, 4]).values).all()
    full = ctpc.simulate(small())
    np.testing.assert_array_equal(back.h.sel(layer=[2, 4]).values,
                                  full.h.sel(layer=[2, 4], sample=[1], unit=[0, 3]).values)
    np.testing.assert_array_equal(back.credit_norm.values, full.credit_norm.values)


# ----------------------------------------------------------------------------- bad input
BAD = [
    (["network.width=0"], "network.width", "greater than or equal to 1"),
    (["network.depth=1"], "network.depth", "greater than or equal to 2"),
    (["integrator.dt=0"], "integrator.dt", "greater than 0"),
    (["integrator.dt=-1"], "integrator.dt", "greater than 0"),
    (["integrator.steps=0"], "integrator.steps", "greater than or equal to 1"),
    (["network.widht=3"], "network.widht", "unknown key"),
    (["integrator.scheme=leapfrog"], "integrator.scheme", "'euler'"),
    (["dtype=float16"], "dtype", "'float32' or 'float64'"),
    (["network.activation=gelu"], "network.activation", "'relu'"),
    (["dynamics.state_lr=0.2"], "dynamics", "not both"),
    (["integrator.inner_steps=2"], "integrator.inner_steps", "only to scheme 'discrete'"),
    (["integrator.t_end=10"], "integrator", "steps or t_end, not both"),
    (["record.layers=[0]"], "record.layers", "hidden layers 1 .. depth-1"),
    (["record.units=[99]"], "record.units", "units 0 .. width-1"),
    (["data.source=npz"], "data.path is required", "npz"),
    (["data.batch_size=5000"], "data.batch_size", "1437 examples of the train split"),
    (["network.input_dim=10"], "network.input_dim", "provides 64"),
    (["integrator.steps=100000", "record.samples=all"], "record", "record.max_mb"),
    (["dynamics.tau_e=1", "integrator.scheme=discrete"], "discrete", "tau_e"),
    (["integrator"], "--set", "KEY.PATH=VALUE"),
]


@pytest.mark.parametrize("overrides,key,hint", BAD, ids=[b[1] + ":" + b[0][0] for b in BAD])
def test_bad_config_messages(overrides, key, hint, capsys):
    args = [str(ROOT / "models" / "pcalm_deep.yaml")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert key in err and hint in err, err


def test_missing_config_file(capsys):
    assert main(["nope.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_weights_file(tmp_path, small):
    cfg = ctpc.load_config(small())
    rng = np.random.default_rng(7)
    shapes = [(6, 5), (6, 6), (6, 6), (6, 6), (3, 6)]
    good = {f"w{i + 1}": rng.standard_normal(s) for i, s in enumerate(shapes)}
    np.savez(tmp_path / "good.npz", **good)
    ds = ctpc.simulate(small(network={"weights": str(tmp_path / "good.npz")}))
    # the final W_L gradient uses the loaded W_L: the file really was used
    default = ctpc.simulate(small())
    assert not np.allclose(ds.bp_grad_w5.values, default.bp_grad_w5.values)
    bad = dict(good, w3=rng.standard_normal((6, 4)))
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ctpc.ConfigError, match=r"w3 has shape \(6, 4\), expected \(6, 6\)"):
        ctpc.load_config(small(network={"weights": str(tmp_path / "bad.npz")}))
    del good["w5"]
    np.savez(tmp_path / "short.npz", **good)
    with pytest.raises(ctpc.ConfigError, match=r"missing \['w5'\]"):
        ctpc.load_config(small(network={"weights": str(tmp_path / "short.npz")}))
    assert cfg.network.weights is None


def test_cuda_request_without_gpu(small):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ctpc.ConfigError, match="no CUDA GPU"):
        ctpc.simulate(small(device="cuda"))


# ----------------------------------------------------------------------------- divergence
def test_divergence_is_a_result(tmp_path, capsys):
    # Explicit Euler is unstable for dt > rho*tau_lambda (spec 5.2): dt = 2.5 tau_lambda.
    out = tmp_path / "div.nc"
    args = [str(ROOT / "models" / "pcalm_deep.yaml"), "--out", str(out), "--quiet",
            "--set", "integrator.scheme=euler", "--set", "integrator.dt=2.5",
            "--set", "dynamics.tau_h=10", "--set", "integrator.steps=400",
            "--set", "network.depth=8", "--set", "record.every=1"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "DIVERGED" in err and "integrator.dt" in err
    ds = ctpc.open_results(out)
    assert ds.attrs["status"] == "diverged"
    t_div = ds.attrs["diverged_at"]
    steps_done = ds.attrs["steps_completed"]
    assert 0 < steps_done < 400
    assert t_div == pytest.approx((steps_done + 1) * 2.5)
    # the trace stops at the last bounded state, which is recorded and finite
    assert int(ds.step[-1]) == steps_done
    bound = 1e6
    assert np.isfinite(ds.h.values).all() and np.abs(ds.lam.values).max() <= bound
    # ... and it really was growing without bound: the next step left the bound
    assert float(ds.lam_norm.isel(time=-1).max()) > 1e2 * float(ds.lam_norm.isel(time=10).max())
    assert np.isfinite(ds.grad_w1.values).all()


def test_divergence_step_is_exact_whatever_the_check_interval(small):
    runs = [ctpc.simulate(small(integrator={"scheme": "euler", "dt": 2.5, "steps": 300,
                                            "check_every": k}, dynamics={"tau_h": 10.0}))
            for k in (1, 7, 64)]
    assert {r.attrs["status"] for r in runs} == {"diverged"}
    assert len({r.attrs["diverged_at"] for r in runs}) == 1
    for r in runs[1:]:
        np.testing.assert_array_equal(r.h.values, runs[0].h.values)


def test_simulate_warns_about_a_sweep_section(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("network: {width: 4, depth: 3}\nintegrator: {steps: 2}\n"
                   "sweep: {integrator.dt: [0.5, 1.0]}\n")
    assert main([str(cfg), "--out", str(tmp_path / "s.nc"), "--quiet"]) == 0
    assert "python -m ctpc.sweep" in capsys.readouterr().err


def test_instability_below_the_absolute_bound_is_caught(small):
    """An unstable scheme with a budget too short to reach divergence_bound (rho = 2, eta_h =
    0.25, alpha = 1 is past spec 5.2's semi-implicit edge): its state grows ~50x in 24 steps.
    The growth bound catches it (status diverged, reason growth); a stable run stays within
    ~1.06x of its initial size and is untouched; growth_bound .inf turns the check off."""
    model = str(ROOT / "models" / "pcalm_paper_discrete.yaml")
    short = ["dynamics.rho=2.0", "integrator.budget=24", "record.every=1",
             "record.variables=[]", "integrator.growth_bound=10"]
    ds = ctpc.simulate(model, short)
    assert ds.attrs["status"] == "diverged" and ds.attrs["diverged_reason"] == "growth"
    off = ctpc.simulate(model, short[:-1] + ["integrator.growth_bound=.inf"])
    assert off.attrs["status"] == "ok"
    assert float(off.res_norm.isel(time=-1).max()) > 10 * float(off.res_norm.isel(time=3).max())
    stable = ctpc.simulate(model, ["integrator.growth_bound=1.5", "record.variables=[]"])
    assert stable.attrs["status"] == "ok"


@pytest.mark.parametrize("scheme", ["semi_implicit", "discrete", "heun"])
def test_divergence_step_is_exact_for_every_solver(scheme, small):
    """Solvers that step their carry in place (Gauss-Seidel) replay from a snapshot: the
    diverged step, the final state and the trace do not depend on the check interval."""
    length = {"budget": 200, "steps": None} if scheme == "discrete" else {"steps": 200}
    dyn = {"state_lr": 0.9, "alpha": 1.5} if scheme == "discrete" else \
        {"tau_h": 1.0, "tau_lambda": 0.6}
    runs = [ctpc.simulate(small(integrator={"scheme": scheme, "dt": 1.0, **length,
                                            "check_every": k}, dynamics=dyn))
            for k in (1, 7, 64)]
    assert {r.attrs["status"] for r in runs} == {"diverged"}
    assert len({r.attrs["diverged_at"] for r in runs}) == 1
    for r in runs[1:]:
        np.testing.assert_array_equal(r.h.values, runs[0].h.values)
        np.testing.assert_array_equal(r.grad_w1.values, runs[0].grad_w1.values)
