"""Reliability of inputs: YAML that explodes or nests without end, numbers out of range (ints
beyond int64, float32 overflow of config values, data and weights), degenerate data shapes,
non-finite evaluation outputs, and the smaller cases (unused bp keys, trace size of training
configs, complex weights, foreign netCDF files, "did you mean", naming the --set override).

Every bad input is exit 2 (or a ConfigError before any work) naming the file, key or override;
never a traceback. docs/reliability_new/inputs.md lists the cases with their messages.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ctpc
from ctpc.config.schema import ConfigError
from ctpc.results.dataset import ResultsError
from ctpc.config.load import MAX_DEPTH, MAX_NODES, read_yaml
from ctpc.build.resolve import load_config
from ctpc.cli.simulate import main as simulate_main
from ctpc.cli.train import main as train_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clicases import cli  # noqa: E402
from datafiles import mnist_arrays, write_mnist_dir  # noqa: E402

BASE = {"name": "tiny", "dtype": "float32", "device": "cpu",
        "network": {"width": 4, "depth": 3, "input_dim": 5, "output_dim": 3},
        "data": {"source": "synthetic", "batch_size": 2},
        "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 3},
        "record": {"samples": [0]}}
# a training run small enough to load in milliseconds and train in about a second
TRAIN = {"name": "tr", "dtype": "float32", "device": "cpu",
         "network": {"width": 4, "depth": 3},
         "data": {"source": "digits", "batch_size": 32, "train_subset": 64, "test_subset": 32},
         "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 3},
         "training": {"epochs": 1}}


def merged(base: dict, **changes) -> dict:
    out = yaml.safe_load(yaml.safe_dump(base))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path



def refused(main, argv, capsys, *needles) -> str:
    code, err = cli(main, argv, capsys)
    assert code == 2, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    return err


def sets(*overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# =========================================================== 1. YAML that explodes
def laughs(levels: int = 6, width: int = 10, merge: bool = False) -> str:
    """The 'billion laughs': each level a list (or merged mapping) of `width` aliases of the
    previous one, under sweep: so that the schema accepts it (sweep values are free-form)."""
    lines = [yaml.safe_dump(BASE).rstrip(), "sweep:"]
    if merge:
        lines[-1] = "extra:"
        lines.append("  l0: &l0 {" + ", ".join(f"k{i}: 1" for i in range(width)) + "}")
        for lv in range(1, levels + 1):
            lines.append(f"  l{lv}: &l{lv} {{" + ", ".join(
                f"k{i}: {{<<: *l{lv - 1}}}" for i in range(width)) + "}")
        return "\n".join(lines) + "\n"
    lines.append("  seed: &l0 [" + ", ".join(["1"] * width) + "]")
    keys = ["integrator.steps", "integrator.dt", "network.width", "network.depth",
            "data.batch_size", "dynamics.rho", "dynamics.tau_e"]
    for lv in range(1, levels + 1):
        lines.append(f"  {keys[lv - 1]}: &l{lv} [" + ", ".join([f"*l{lv - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_at_once_naming_the_file(tmp_path, capsys):
    """452 bytes that expand to a million values took 57 s and wrote 17.6 MB; now exit 2 from
    the loader, before validation, and nothing is written."""
    path = write(tmp_path / "laughs.yaml", laughs())
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    err = refused(simulate_main, [path, "--out", tmp_path / "o.nc", "--quiet"], capsys,
                  "laughs.yaml", "aliases", f"{MAX_NODES:,}")
    assert time.perf_counter() - start < 10       # 3 ms here; it was 24-57 s
    assert "billion laughs" in err
    assert not (tmp_path / "o.nc").exists()


def test_alias_expansion_below_the_limit_is_read(tmp_path):
    """Aliases are fine as long as they expand to a sane size."""
    raw = read_yaml(write(tmp_path / "ok.yaml", laughs(levels=2, width=10)))
    assert len(raw["sweep"]["integrator.dt"]) == 10
    assert raw["sweep"]["integrator.steps"][0] == [1] * 10


def test_billion_laughs_through_merge_keys_is_refused(tmp_path):
    path = write(tmp_path / "m.yaml", laughs(levels=6, width=10, merge=True))
    with pytest.raises(ConfigError, match="aliases"):
        read_yaml(path)


def test_recursive_alias_is_refused(tmp_path, capsys):
    path = write(tmp_path / "r.yaml", "integrator: {steps: 3}\nsweep: {seed: &a [1, *a]}\n")
    refused(simulate_main, [path, "--out", tmp_path / "o.nc"], capsys, "r.yaml",
            "contains itself")


def test_merge_key_works_and_the_mapping_own_keys_win(tmp_path):
    """`<<:` was refused ('could not determine a constructor for the tag ...merge'): the
    duplicate-key check ran before PyYAML's merge step."""
    text = ("name: m\ndevice: cpu\ndtype: float64\n"
            "shapes: &shape {width: 4, depth: 3, input_dim: 5, output_dim: 3}\n"
            "network:\n  <<: *shape\n  width: 6\n"
            "data: {source: synthetic, batch_size: 2}\n"
            "integrator:\n  <<: [{dt: 0.5}, {steps: 3}]\n")
    raw = read_yaml(write(tmp_path / "m.yaml", text))
    assert raw["network"] == {"width": 6, "depth": 3, "input_dim": 5, "output_dim": 3}
    assert raw["integrator"] == {"dt": 0.5, "steps": 3}
    raw.pop("shapes")
    cfg = load_config(raw)
    assert (cfg.network.width, cfg.network.depth, cfg.integrator.dt) == (6, 3, 0.5)


def test_merge_key_keeps_the_duplicate_key_check(tmp_path):
    text = "a: &a {x: 1}\nb:\n  <<: *a\n  y: 2\n  y: 3\n"
    with pytest.raises(ConfigError, match="'y' twice"):
        read_yaml(write(tmp_path / "d.yaml", text))


# ==================================================== 2. nesting and sizes: no traceback
DEEP = "[" * 3000 + "]" * 3000


def test_deeply_nested_set_value_is_refused(tmp_path, capsys):
    """RecursionError from PyYAML's composer before."""
    path = write(tmp_path / "b.yaml", BASE)
    err = refused(simulate_main, [path, "--out", tmp_path / "o.nc", *sets(f"a={DEEP}")],
                  capsys, "--set a", f"more than {MAX_DEPTH} levels")
    assert len(err) < 1000       # the value is cut in the message


def test_deeply_nested_yaml_file_is_refused(tmp_path, capsys):
    path = write(tmp_path / "deep.yaml", f"integrator: {{steps: 3}}\nsweep: {{seed: {DEEP}}}\n")
    refused(simulate_main, [path, "--out", tmp_path / "o.nc"], capsys, "deep.yaml",
            "nested more than")


def test_deeply_nested_and_cyclic_python_configs_are_refused():
    deep = cur = []
    for _ in range(3000):
        cur.append([])
        cur = cur[0]
    with pytest.raises(ConfigError, match="override sweep: lists or mappings are nested"):
        load_config(BASE, {"sweep": {"seed": deep}})
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(ConfigError, match="contains itself"):
        load_config(merged(BASE, sweep={"seed": cyclic}))


@pytest.mark.parametrize("override, key", [
    ("network.width=" + "9" * 400, "network.width"),
    ("network.width=" + "9" * 5000, "network.width"),      # beyond Python's str->int limit
    ("network.depth=" + "9" * 400, "network.depth"),
    ("data.batch_size=" + "9" * 400, "data.batch_size"),
    ("training.epochs=" + "9" * 40, "training.epochs"),
])
def test_integers_beyond_int64_are_refused(override, key, tmp_path, capsys):
    """A 400-digit width ended in 'OverflowError: int too large to convert to float'."""
    path = write(tmp_path / "b.yaml", BASE)
    err = refused(simulate_main, [path, "--out", tmp_path / "o.nc", *sets(override)], capsys,
                  "network.width" if "5000" in override else key)
    assert len(err) < 1000


def test_huge_epochs_are_refused_by_the_memory_check(capsys, tmp_path):
    """training.epochs: 10**12 tried to allocate its history buffers (176 TB): they are in the
    memory check now, which names the key."""
    with pytest.raises(ConfigError, match=r"memory: .*training\.epochs \(now 1,000,000,000,000"):
        load_config(merged(TRAIN, training={"epochs": 10 ** 12}))
    path = write(tmp_path / "t.yaml", TRAIN)
    refused(train_main, [path, "--out", tmp_path / "t.nc", *sets("training.epochs=1000000000000")],
            capsys, "memory:", "training.epochs")
    # max_updates bounds the schedule: accepted
    cfg = load_config(merged(TRAIN, training={"epochs": 10 ** 12, "max_updates": 3}))
    assert cfg.training.epochs == 10 ** 12


def test_every_update_and_evaluation_buffer_counts_in_the_memory_estimate():
    from ctpc.results.memory import estimate, training_counts
    cfg = load_config(merged(TRAIN, training={"epochs": 10, "eval_every": 1}))
    assert training_counts(cfg, 64) == (2, 20, 2 + 10 + 20, 0)
    names = {t.name for t in estimate(cfg, (64, 32))}
    assert {"training history", "evaluation history", "training schedule",
            "training data"} <= names
    assert "training history" not in {t.name for t in estimate(cfg)}


def test_idx_images_without_pixels_are_refused(tmp_path, capsys):
    arrays = mnist_arrays()
    for split, n in (("train", 20), ("test", 8)):
        arrays[split, "images"] = np.zeros((n, 0, 0), np.uint8)
    write_mnist_dir(tmp_path / "mnist", arrays)
    cfg = merged(TRAIN, data={"source": "idx", "path": str(tmp_path / "mnist"),
                              "train_subset": None, "test_subset": None, "batch_size": 2})
    path = write(tmp_path / "c.yaml", cfg)
    refused(simulate_main, [path, "--out", tmp_path / "o.nc"], capsys, "data.path",
            "train-images-idx3-ubyte.gz", "0 x 0 pixels")


def test_npz_without_classes_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((10, 4)), y=np.zeros((10, 0)))
    cfg = merged(BASE, network={"input_dim": None, "output_dim": None},
                 data={"source": "npz", "path": str(tmp_path / "d.npz")})
    with pytest.raises(ConfigError, match=r"array 'y' has shape \(10, 0\): no classes"):
        load_config(cfg)


def test_a_single_override_string_is_one_override():
    """simulate(cfg, "integrator.steps=5") split the string into characters before."""
    ds = ctpc.simulate(BASE, "integrator.steps=5")
    assert ds.attrs["n_steps"] == 5
    assert load_config(BASE, ("integrator.steps=7",)).integrator.steps == 7
    with pytest.raises(ConfigError, match="overrides must be a list of 'key.path=value'"):
        load_config(BASE, 5)
    with pytest.raises(ConfigError, match="override 5: expected a 'key.path=value' string"):
        load_config(BASE, [5])


# ======================================================= 3. float32 overflow, named
FLOAT32_CASES = [   # (override, key in the message); every one was a RuntimeError or inf
    ("dynamics.state_lr=1e39", "dynamics.state_lr"),
    ("dynamics.tau_h=1e-308", "dynamics.tau_h"),
    ("dynamics.tau_h=1e39", "dynamics.tau_h"),           # 1/tau_h underflows float32
    ("dynamics.rho=1e308", "dynamics.rho"),
    ("dynamics.tau_lambda=1e-39", "dynamics.tau_lambda"),
    ("dynamics.alpha=1e39", "dynamics.alpha"),
    ("dynamics.tau_e=1e-39", "dynamics.tau_e"),
    ("integrator.divergence_bound=1e39", "integrator.divergence_bound"),
    ("integrator.dt=1e-39", "integrator.dt"),
]


@pytest.mark.parametrize("override, key", FLOAT32_CASES, ids=[c[0] for c in FLOAT32_CASES])
def test_config_numbers_beyond_float32_are_refused_at_load(override, key, tmp_path, capsys):
    path = write(tmp_path / "b.yaml", BASE)
    refused(simulate_main, [path, "--out", tmp_path / "o.nc", *sets(override)], capsys,
            key, "float32", "dtype: float64")


@pytest.mark.parametrize("overrides, key", [
    (["training.lr=1e39"], "training.lr"),
    (["training.plasticity=continuous", "training.tau_w=1e-39"], "training.tau_w"),
])
def test_training_numbers_beyond_float32_are_refused_at_load(overrides, key, tmp_path, capsys):
    path = write(tmp_path / "t.yaml", TRAIN)
    refused(train_main, [path, "--out", tmp_path / "t.nc", *sets(*overrides)], capsys,
            key, "float32", "dtype: float64")


def test_numbers_are_checked_before_an_auto_step_size_uses_them():
    """state_lr: auto runs a power iteration in the config's dtype when the config is loaded:
    rho must be checked before it (and the resolved step after it)."""
    with pytest.raises(ConfigError, match=r"dynamics.rho: the value 1e\+39 is beyond the float32"):
        load_config(BASE, ["dynamics.state_lr=auto", "dynamics.alpha=1.0", "dynamics.rho=1e39"])


def test_the_same_numbers_run_in_float64():
    cfg = load_config(BASE, ["dtype=float64", "integrator.divergence_bound=1e39",
                             "dynamics.tau_h=1e39"])
    assert cfg.integrator.divergence_bound == 1e39


def test_a_rate_beyond_any_float_is_refused_in_float64():
    with pytest.raises(ConfigError, match=r"dynamics.tau_h: the rate 1/tau_h = inf"):
        load_config(BASE, ["dtype=float64", "dynamics.tau_h=5e-324"])


def _npz_with_big_test_inputs(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4))
    x_test = x[:20].copy()
    x_test[3, 1] = 1e39              # finite in float64, inf in float32
    np.savez(path, x_train=x, y_train=np.arange(40) % 3, x_test=x_test,
             y_test=np.arange(20) % 3)
    return path


def test_data_beyond_float32_is_refused_naming_the_array(tmp_path, capsys):
    """x_test ~1e39 trained to status ok and printed 'test 0.4000' beside 'MSE ... test nan'."""
    data = _npz_with_big_test_inputs(tmp_path / "d.npz")
    cfg = merged(TRAIN, data={"source": "npz", "path": str(data), "batch_size": 4,
                              "train_subset": None, "test_subset": None})
    path = write(tmp_path / "t.yaml", cfg)
    refused(train_main, [path, "--out", tmp_path / "t.nc"], capsys, "d.npz", "'x_test'",
            "float32", "dtype: float64")
    assert not (tmp_path / "t.nc").exists()
    assert load_config(merged(cfg, dtype="float64")).dtype == "float64"


def test_normalisation_beyond_float32_names_data_std(capsys, tmp_path):
    """data.std that overflows float32 was reported as 'the run DIVERGED at t = 1 ms'."""
    path = write(tmp_path / "b.yaml", merged(BASE, network={"input_dim": None,
                                                            "output_dim": None},
                                             data={"source": "digits"}))
    refused(simulate_main, [path, "--out", tmp_path / "o.nc", *sets("data.std=1e-39")],
            capsys, "data.source 'digits'", "data.std", "float32", "dtype: float64")


def test_npz_targets_beyond_float32_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((6, 5)),
             y=rng.standard_normal((6, 3)) * 1e39)
    cfg = merged(BASE, data={"source": "npz", "path": str(tmp_path / "d.npz")})
    with pytest.raises(ConfigError, match="array 'y' holds values up to .* float32"):
        load_config(cfg)


def _weights(path: Path, change=None) -> Path:
    rng = np.random.default_rng(0)
    w = {f"w{i}": rng.standard_normal(s) for i, s in
         enumerate([(4, 5), (4, 4), (3, 4)], start=1)}
    if change:
        change(w)
    np.savez(path, **w)
    return path


def test_weights_beyond_float32_are_refused_naming_the_array(tmp_path, capsys):
    """They ran and were reported as 'the run DIVERGED at t = 1 ms ... smaller dt'."""
    w = _weights(tmp_path / "w.npz", lambda w: w["w2"].__setitem__((0, 0), 1e39))
    path = write(tmp_path / "b.yaml", BASE)
    refused(simulate_main, [path, "--out", tmp_path / "o.nc",
                            *sets(f"network.weights={w}")], capsys,
            "network.weights", "w.npz", "w2", "float32", "dtype: float64")
    assert load_config(BASE, [f"network.weights={w}", "dtype=float64"]).dtype == "float64"


# ======================================== 4. no accuracy from non-finite outputs
def test_accuracy_of_non_finite_outputs_is_nan():
    from ctpc.build.objects import build_model
    from ctpc.training.metrics import evaluate
    cfg = load_config(merged(BASE, dtype="float64", network={"activation": "linear"}))
    model = build_model(cfg)
    w = model.weights
    n = 6
    x = torch.randn(n, 5, dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    y = torch.nn.functional.one_hot(labels, 3).double()
    finite = evaluate(model.net, w, x, labels, y, chunk=4)
    assert torch.isfinite(finite["acc"]).all()
    x[5, 0] = float("inf")          # one example in the second chunk: outputs non-finite
    bad = evaluate(model.net, w, x, labels, y, chunk=4)
    assert torch.isnan(bad["acc"]).all()


# ==================================================================== 5. smaller
def test_pc_only_keys_with_bp_warn_once_for_a_single_run(tmp_path, capsys):
    cfg = merged(TRAIN, dynamics={"method": "bp", "alpha": 0.5, "rho": 2.0})
    path = write(tmp_path / "t.yaml", cfg)
    code, err = cli(train_main, [path, "--out", tmp_path / "t.nc", "--quiet"], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("ctpc: warning:")]
    assert len(lines) == 1, err
    assert "dynamics.rho, dynamics.alpha are unused by dynamics.method 'bp'" in lines[0]
    stored = yaml.safe_load(ctpc.open_results(tmp_path / "t.nc").attrs["config"])
    assert stored["dynamics"]["alpha"] == 0.5             # to_dict() unchanged


def test_bp_warning_is_not_given_per_sweep_cell():
    """Sweep cells load through prepare_config (ctpc.sweep.cluster) and run with
    train_replicas: neither warns; a plain bp config warns nowhere."""
    from ctpc.build.resolve import unused_by_bp
    from ctpc.training import prepare_config
    cfg = merged(TRAIN, dynamics={"method": "bp", "alpha": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = prepare_config(cfg)
    assert unused_by_bp(loaded) == ["dynamics.alpha"]
    assert unused_by_bp(prepare_config(merged(TRAIN, dynamics={"method": "bp"}))) == []
    assert unused_by_bp(prepare_config(merged(TRAIN, dynamics={"alpha": 0.5}))) == []


def test_training_configs_skip_the_trace_size_check():
    """Training records no traces, but a config whose simulation would record more than
    record.max_mb was refused for it (by ctpc.train too)."""
    from ctpc.training import prepare_config
    big = merged(TRAIN, network={"width": 128, "depth": 16}, integrator={"steps": 100000})
    with pytest.raises(ConfigError, match="record: the traces would take"):
        load_config(merged(big, training=None))          # a simulation: still refused
    assert load_config(big).integrator.steps == 100000
    assert prepare_config(merged(big, training=None)).training.epochs == 1


@pytest.mark.parametrize("make, needle", [
    (lambda w: w.__setitem__("w1", w["w1"] + 1j), "w1 has dtype complex128 (complex numbers)"),
    (lambda w: w.__setitem__("w3", w["w3"].astype(str)), "w3 has dtype <U"),
])
def test_complex_or_text_weights_are_refused(make, needle, tmp_path, capsys):
    """Complex weights lost their imaginary part with only a numpy ComplexWarning."""
    w = _weights(tmp_path / "w.npz", make)
    path = write(tmp_path / "b.yaml", BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(simulate_main, [path, "--out", tmp_path / "o.nc",
                                *sets(f"network.weights={w}")], capsys,
                "network.weights", needle, "real numbers")


def test_open_results_refuses_a_netcdf_file_ctpc_did_not_write(tmp_path):
    import xarray as xr
    xr.Dataset({"a": ("x", [1.0, 2.0])}).to_netcdf(tmp_path / "other.nc")
    with pytest.raises(ResultsError, match="other.nc' is a netCDF file but not ctpc results"):
        ctpc.open_results(tmp_path / "other.nc")
    ds = ctpc.simulate(BASE, out=tmp_path / "run.nc")
    assert ctpc.open_results(tmp_path / "run.nc").attrs["n_steps"] == ds.attrs["n_steps"]


@pytest.mark.parametrize("override, suggestion", [
    ("network.widht=3", "did you mean network.width?"),
    ("netwerk.width=3", "did you mean network?"),
    ("network.tau_h=3", "did you mean dynamics.tau_h?"),
    ("integrator.stpes=3", "did you mean integrator.steps?"),
])
def test_unknown_key_gets_a_suggestion_and_the_override_is_named(override, suggestion,
                                                                  tmp_path, capsys):
    path = write(tmp_path / "b.yaml", BASE)
    err = refused(simulate_main, [path, "--out", tmp_path / "o.nc", *sets(override)], capsys,
                  "unknown key", suggestion, f"[--set {override}]", "(from --set)")
    assert "b.yaml" not in err


def test_bad_set_value_names_the_override_not_the_file(tmp_path, capsys):
    path = write(tmp_path / "b.yaml", BASE)
    err = refused(simulate_main, [path, "--out", tmp_path / "o.nc",
                                  *sets("integrator.scheme=leapfrog")], capsys,
                  "integrator.scheme", "[--set integrator.scheme=leapfrog]")
    assert "b.yaml" not in err


def test_unknown_key_in_the_file_names_the_file_and_suggests(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", "integrator: {stpes: 3}\n")
    err = refused(simulate_main, [path, "--out", tmp_path / "o.nc"], capsys, "c.yaml",
                  "integrator.stpes: unknown key (did you mean integrator.steps?")
    assert "--set" not in err
