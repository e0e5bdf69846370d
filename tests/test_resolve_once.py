"""One run loads, validates and resolves its config once, checks its outputs, memory and trace
size once, and reads each input file once (ctpc.build.resolve.Resolved).

Every function below is wrapped, wherever a module holds it, and its calls are counted for one
run: ``ctpc.simulate`` of a YAML path, ``python -m ctpc.simulate`` (``ctpc.cli.simulate.main``),
``ctpc.train`` and ``python -m ctpc.train``, a loaded config run by either, ``state_lr: auto``,
and a 2-cell sweep (simulation and training cells) whose cells travel to their worker as a real
worker process receives them (pickled) but run in this process, so that the worker's calls are
counted too. The inputs: the YAML, an .npz data set (data.source: npz) and an .npz weights file
(network.weights); "opens" counts the times each of them is opened for reading (YAML / data /
weights), the digests of the sweep's cell keys and of training's checkpoint included.

Calls before this change (commit cae4e3a, measured with this file) > after; a sweep: its 2
cells together, the worker's share included. yaml: read_yaml; weights: check_weights_file.

run                        resolve  yaml  describe  memory  trace  outputs  weights  model  batch  split  tcfg  opens y/d/w
-------------------------  -------  ----  --------  ------  -----  -------  -------  -----  -----  -----  ----  -------------
ctpc.simulate(yaml)        1>1      1>1   1>1       1>1     2>1    1>1      2>1      1>1    1>1    0      0     1/2/2 > 1/1/1
python -m ctpc.simulate    2>1      1>1   2>1       2>1     3>1    2>1      3>1      1>1    1>1    0      0     1/2/3 > 1/1/1
simulate(load_config(y))   2>1      1>1   2>1       2>1     3>1    0        3>1      1>1    1>1    0      0     1/2/3 > 1/1/1
simulate, state_lr: auto   1>1      1>1   1>1       1>1     2>1    0        3>1      2>1    2>1    0      0     1/2/3 > 1/1/1
ctpc.train(yaml, out=)     1>1      1>1   1>1       1>1     0      1>1      2>1      1>1    1>0    2>2    18>1  1/3/3 > 1/1/1
python -m ctpc.train       2>1      1>1   2>1       2>1     0      2>1      3>1      1>1    1>0    2>2    20>1  1/3/4 > 1/1/1
train(load_config(y))      2>1      1>1   2>1       2>1     0      0        3>1      1>1    1>0    2>2    18>0  1/2/3 > 1/1/1
train, state_lr: auto      1>1      1>1   1>1       1>1     0      0        3>1      2>1    2>1    2>2    18>1  1/2/3 > 1/1/1
sweep, 2 simulation cells  4>2      1>1   4>2       4>2     5>2    3>3      6>2      1>1    2>2    0      0     1/3/7 > 1/1/2
sweep, 2 training cells    4>2      1>1   4>2       4>2     0      3>3      6>2      1>1    2>0    2>2    33>0  1/3/7 > 1/1/2

model: build_model; batch: load_batch; split: load_split, train and test; tcfg: training_config
(prepare_config: 1 > 1 for ctpc.train, 2 > 1 for python -m ctpc.train, 2 > 0 for the training
sweep, whose cells have their training: section); a sweep's outputs: the combined file and the
cells' files, checked at planning and before the run, not per cell. Before, an .npz was opened
twice per reading (its format, then numpy) and once more for a digest; now one opening gives
both. The lambda_max of ``state_lr: auto`` is computed on the network's float64 structure and
weights, not on a second model.
"""
from __future__ import annotations

import builtins
import contextlib
import functools
import io
import os
import pickle
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

import ctpc
import ctpc.build.resolve
import ctpc.cli.simulate
import ctpc.cli.train
import ctpc.config.load
import ctpc.config.paths
import ctpc.core.network
import ctpc.data
import ctpc.results.memory
import ctpc.sim.backends.torch_backend
import ctpc.sim.simulation
import ctpc.sweep
import ctpc.sweep.cluster
import ctpc.training
import ctpc.training.setup
from ctpc.build.objects import build_model

# name -> (module, attribute) of each function counted
COUNTED = {
    "resolve": ("ctpc.build.resolve", "resolve"),
    "read_yaml": ("ctpc.config.load", "read_yaml"),
    "describe": ("ctpc.data", "describe"),
    "check_memory": ("ctpc.results.memory", "check_memory"),
    "check_trace_size": ("ctpc.results.memory", "check_trace_size"),
    "check_outputs": ("ctpc.config.paths", "check_outputs"),
    "read_weights": ("ctpc.core.network", "check_weights_file"),
    "load_batch": ("ctpc.data", "load_batch"),
    "load_split": ("ctpc.data", "load_split"),
    "build_model": ("ctpc.build.objects", "build_model"),
    "prepare_config": ("ctpc.training", "prepare_config"),
    "training_config": ("ctpc.training.setup", "training_config"),
}
ONCE = ("read_yaml", "resolve", "describe", "check_memory", "check_outputs", "read_weights")


class Counts(Counter):
    """Calls per counted function; ``opened[path]``: opens for reading of each input file."""

    def __init__(self):
        super().__init__()
        self.opened: Counter = Counter()


def _wrap(counts: Counts, name: str, fn):
    @functools.wraps(fn)
    def counted(*args, **kwargs):
        counts[name] += 1
        return fn(*args, **kwargs)
    return counted


@pytest.fixture
def counts(monkeypatch, inputs):
    """Wrap every counted function in every ctpc module that holds it (a ``from .. import``
    binds it under its own name), and ``open`` for the input files."""
    counts = Counts()
    for name, (module, attr) in COUNTED.items():
        original = getattr(sys.modules[module], attr)
        wrapped = _wrap(counts, name, original)
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("ctpc") and \
                    getattr(mod, attr, None) is original:
                monkeypatch.setattr(mod, attr, wrapped)
    watched = {p.resolve(): key for key, p in inputs.items() if key != "dir"}
    real_open = builtins.open

    def watching_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and "r" in mode:
            key = watched.get(Path(os.fspath(file)).resolve())
            if key is not None:
                counts.opened[key] += 1
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", watching_open)
    monkeypatch.setattr(io, "open", watching_open)
    _forget_files()
    return counts


def _forget_files():
    """The data readers' caches hold files until they change: start each run without them."""
    from ctpc.data import npz
    npz._read_cached.cache_clear()


SHAPES = [(4, 5), (4, 4), (3, 4)]        # depth 3, width 4, 5 inputs, 3 classes


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x_train=rng.standard_normal((12, 5)), y_train=rng.integers(0, 3, 12),
             x_test=rng.standard_normal((6, 5)), y_test=np.arange(6) % 3)
    weights = tmp_path / "w.npz"
    np.savez(weights, **{f"w{i}": rng.standard_normal(s) for i, s in enumerate(SHAPES, 1)})
    base = {"dtype": "float64", "device": "cpu",
            "network": {"width": 4, "depth": 3, "weights": str(weights)},
            "data": {"source": "npz", "path": str(data), "batch_size": 3},
            "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 4},
            "record": {"every": 1}}
    training = {**base, "training": {"epochs": 1, "eval_every": None, "checkpoint_every": None}}
    out = {"dir": tmp_path, "data": data, "weights": weights}
    for key, raw in (("sim", base), ("train", training),
                     ("sweep", {**base, "sweep": {"seed": [0, 1]}}),
                     ("train_sweep", {**training, "sweep": {"seed": [0, 1]}})):
        out[key] = tmp_path / f"{key}.yaml"
        out[key].write_text(yaml.safe_dump(raw))
    return out


def _assert_once(counts: Counts, *names, expect=1):
    for name in names:
        assert counts[name] == expect, (name, dict(counts), dict(counts.opened))


def test_simulate_of_a_yaml_path(counts, inputs):
    ds = ctpc.simulate(inputs["sim"], ["integrator.steps=5"], out=inputs["dir"] / "s.nc")
    assert ds.attrs["status"] == "ok" and ds.attrs["n_steps"] == 5
    _assert_once(counts, *ONCE, "check_trace_size", "load_batch", "build_model")
    assert counts["load_split"] == 0
    assert counts.opened == {"sim": 1, "weights": 1, "data": 1}, dict(counts.opened)


def test_simulate_command(counts, inputs, capsys):
    out = inputs["dir"] / "cli.nc"
    assert ctpc.cli.simulate.main([str(inputs["sim"]), "--out", str(out), "--quiet",
                                   "--threads", "1"]) == 0
    assert out.exists()
    _assert_once(counts, *ONCE, "check_trace_size", "load_batch", "build_model")
    assert counts.opened == {"sim": 1, "weights": 1, "data": 1}, dict(counts.opened)


def test_simulate_of_a_loaded_config_resolves_nothing_again(counts, inputs):
    cfg = ctpc.load_config(inputs["sim"])
    before = Counts()
    before.update(counts)
    ds = ctpc.simulate(cfg)
    assert ds.attrs["status"] == "ok"
    _assert_once(counts, *ONCE[:-2], "read_weights", "check_trace_size", "load_batch")
    assert counts["check_outputs"] == 0          # no output: nothing written, nothing checked


def test_train_of_a_yaml_path(counts, inputs):
    ds = ctpc.train(inputs["train"], out=inputs["dir"] / "t.nc")
    assert ds.attrs["status"] == "ok"
    _assert_once(counts, *ONCE, "prepare_config", "build_model", "training_config")
    _assert_once(counts, "load_split", expect=2)        # train and test, once each
    _assert_once(counts, "load_batch", "check_trace_size", expect=0)
    assert counts.opened == {"train": 1, "weights": 1, "data": 1}, dict(counts.opened)


def test_train_command(counts, inputs, capsys):
    out = inputs["dir"] / "tcli.nc"
    assert ctpc.cli.train.main([str(inputs["train"]), "--out", str(out), "--quiet",
                                "--threads", "1"]) == 0
    assert out.exists()
    _assert_once(counts, *ONCE, "prepare_config", "build_model", "training_config")
    _assert_once(counts, "load_split", expect=2)
    _assert_once(counts, "load_batch", "check_trace_size", expect=0)
    assert counts.opened == {"train": 1, "weights": 1, "data": 1}, dict(counts.opened)


class _Done:
    """A finished task, as distributed's Future shows it."""
    status = "finished"

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def release(self):
        pass


class _InlineClient:
    """Runs each task at once, in this process, on a pickled copy of its arguments: what a
    worker process receives."""

    def __init__(self):
        self.sent = []

    def submit(self, fn, *args, pure=True):
        blob = pickle.dumps(args)
        self.sent.append(blob)
        return _Done(fn(*pickle.loads(blob)))

    def scheduler_info(self):
        return {"workers": {"inline": {}}}


class _AsCompleted:
    def __init__(self, futures):
        self.futures = list(futures)

    def add(self, fut):
        self.futures.append(fut)

    def __iter__(self):
        while self.futures:
            yield self.futures.pop(0)


@pytest.fixture
def inline_cluster(monkeypatch, no_cluster):
    """The sweep's cluster: :class:`_InlineClient` (the ``no_cluster`` fixture refuses a real
    one)."""
    import distributed

    client = _InlineClient()

    @contextlib.contextmanager
    def inline(**_):
        yield client
    monkeypatch.setattr(ctpc.sweep, "dask_client", inline)
    monkeypatch.setattr(distributed, "as_completed", _AsCompleted)
    return client


@pytest.mark.parametrize("kind", ["sweep", "train_sweep"])
def test_each_sweep_cell_is_resolved_once(kind, counts, inputs, inline_cluster):
    ds = ctpc.sweep.run_sweep(inputs[kind], out=inputs["dir"] / f"{kind}.nc", progress=False)
    assert ds.attrs["n_cells"] == 2 and ds.attrs["n_ok"] == 2
    assert len(inline_cluster.sent) == 1                  # the two cells: one replica group
    _assert_once(counts, "read_yaml")
    _assert_once(counts, "resolve", "describe", "check_memory", "read_weights", expect=2)
    if kind == "sweep":
        _assert_once(counts, "check_trace_size", "load_batch", expect=2)
    else:       # the cells have a training: section: no defaults to fill in
        _assert_once(counts, "check_trace_size", "load_batch", "training_config", "prepare_config",
                     expect=0)
        _assert_once(counts, "load_split", expect=2)
    _assert_once(counts, "build_model")                   # one model for the replica group
    (sent, _commands), = [pickle.loads(blob) for blob in inline_cluster.sent]
    assert all(type(c).__name__ == "Resolved" for c in sent)   # not dicts to parse again
    # the weights file is read once per cell (its digest, for the cell's key, from that
    # reading), the data set once (cached, digest included), the YAML once
    assert counts.opened == {kind: 1, "weights": 2, "data": 1}, dict(counts.opened)


@pytest.mark.parametrize("run", ["simulate", "train"])
def test_an_auto_step_is_found_once_and_kept(run, counts, inputs, monkeypatch):
    """state_lr: auto: lambda_max is computed on the initial weights and the batch while
    resolving; the simulation takes both from there, training builds no model of its own for
    it and loads no batch beyond it."""
    from ctpc.build import auto_step
    monkeypatch.setattr(auto_step, "_MEMO", {})
    over = ["dynamics.state_lr=auto", "dynamics.alpha=1.0"]
    if run == "simulate":
        ds = ctpc.simulate(inputs["sim"], over)
    else:
        ds = ctpc.train(inputs["train"], over)
    assert ds.attrs["status"] == "ok"
    _assert_once(counts, *ONCE[:-2], "read_weights", "build_model", "load_batch")
    assert counts.opened == {run if run == "train" else "sim": 1, "weights": 1, "data": 1}


def test_a_loaded_training_config_is_trained_as_it_is(counts, inputs):
    cfg = ctpc.load_config(inputs["train"])
    ds = ctpc.train(cfg)
    assert ds.attrs["status"] == "ok"
    _assert_once(counts, *ONCE[:-2], "read_weights", "prepare_config", "build_model")
    _assert_once(counts, "training_config", "load_batch", expect=0)


def test_a_resolved_config_cannot_change():
    cfg = ctpc.load_config({"integrator": {"steps": 2}, "data": {"source": "synthetic"},
                            "network": {"input_dim": 3, "output_dim": 2, "depth": 2}})
    assert isinstance(cfg, ctpc.Config) and cfg.network.depth == 2
    for change in (lambda: setattr(cfg.network, "depth", 3), lambda: setattr(cfg, "seed", 1),
                   lambda: cfg.record.samples.append(1)):
        with pytest.raises(TypeError, match="a resolved config cannot be changed"):
            change()
    assert ctpc.load_config(cfg) is cfg                     # resolved already: as it is
    assert ctpc.load_config(cfg, ["seed=1"]).seed == 1      # a new config, resolved anew
    changed = cfg.model_copy(update={"seed": 2})            # a changed copy is unresolved
    assert type(changed) is ctpc.Config
    with pytest.raises(TypeError, match="needs a resolved config"):
        build_model(changed)
    build_model(cfg)


def test_a_resolved_config_unpickles_in_a_fresh_process(tmp_path):
    """A sweep cell travels to its Dask worker pickled: the worker has resolved nothing yet, so
    every frozen section class, nested ones (dynamics.noise) included, must exist at import."""
    import subprocess
    from conftest import small_config
    cfg = ctpc.load_config(small_config(dynamics={"noise": {"h": 0.1}}))
    path = tmp_path / "cfg.pkl"
    path.write_bytes(pickle.dumps(cfg))
    code = f"import pickle; c = pickle.load(open({str(path)!r}, 'rb')); print(c.dynamics.noise.h)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0.1"
