"""Reliability: every bad input or fault gives exit 2 with a clear message, or a documented
result. Table-driven: each case names the input, the expected exit code and message substrings
that name the key or file. docs/reliability.md lists the same cases by defect class (numbered as
there); run them with ``pytest tests/test_reliability.py -v``.

Most cases exit at validation and run in-process through ``ctpc.simulate.main(argv)`` and
``ctpc.cli.sweep.main(argv)``; sweeps that run use a tiny network on an in-process Dask
client (reached through its ``inproc://`` address, so the CLI path is the one tested);
subprocesses only for signals.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import BaseModel

import ctpc
import ctpc.sweep as sweep_mod
from ctpc.config.schema import Config, ConfigError
from ctpc.results.dataset import ResultsError, open_results
from ctpc.build.resolve import load_config
from ctpc.config.paths import companion_path
from ctpc.sim.recording import plan_recording
from ctpc.cli.simulate import main as simulate_main
from ctpc.cli.sweep import main as sweep_main
from ctpc.config.identity import input_digests
from clicases import check, cli, cli_with_permissions

ROOT = Path(__file__).resolve().parent.parent

BASE = {"name": "tiny", "dtype": "float64", "device": "cpu",
        "network": {"width": 4, "depth": 3, "input_dim": 5, "output_dim": 3},
        "data": {"source": "synthetic", "batch_size": 2},
        "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 3},
        "record": {"samples": [0]}}


def raw(**changes) -> dict:
    out = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rel")
    (d / "base.yaml").write_text(yaml.safe_dump(BASE))
    (d / "sweep.yaml").write_text(yaml.safe_dump(raw(sweep={"seed": [0, 1]})))
    (d / "afile").write_text("a regular file\n")
    return d




def sets(*overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# ======================================================================= 5: numbers in range
def float_fields(model=Config, prefix="") -> list[str]:
    """Every float key of the schema (nested models followed)."""
    out = []
    for name, field in model.model_fields.items():
        args = typing.get_args(field.annotation) or (field.annotation,)
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel):
                out += float_fields(a, f"{prefix}{name}.")
        if float in args:
            out.append(prefix + name)
    return out


FLOAT_FIELDS = float_fields()
# keys that need another key changed so that the value under test is the only problem
CONTEXT = {"integrator.t_end": ["integrator.steps=null"]}
# .inf documented as meaningful: tau_lambda (no multiplier dynamics), growth_bound (check off)
DOCUMENTED_INF = {("dynamics.tau_lambda", ".inf"), ("integrator.growth_bound", ".inf")}

SYSTEMATIC = [(f"{key}={v}", [*CONTEXT.get(key, []), f"{key}={v}"], 2, [key])
              for key in FLOAT_FIELDS for v in (".inf", "-.inf", ".nan")
              if (key, v) not in DOCUMENTED_INF]


def test_schema_float_fields_are_all_covered():
    """The systematic table follows the schema: a new float key is tested automatically, and
    .inf is accepted exactly where the README documents a meaning for it (DOCUMENTED_INF)."""
    assert len(FLOAT_FIELDS) >= 12 and "dynamics.tau_lambda" in FLOAT_FIELDS
    accepted = set()
    for key in FLOAT_FIELDS:
        for v in (".inf", "-.inf", ".nan"):
            try:
                load_config(raw(), [*CONTEXT.get(key, []), f"{key}={v}"], resolve_files=False)
                accepted.add((key, v))
            except ConfigError:
                pass
    assert accepted == DOCUMENTED_INF


NUMBERS = [
    # the audit's list, given through --set (YAML .inf / .nan)
    ("t_end=.inf", ["integrator.steps=null", "integrator.t_end=.inf"], 2,
     ["integrator.t_end", "finite"]),
    ("alpha=.inf", ["dynamics.alpha=.inf"], 2, ["dynamics.alpha", "finite"]),
    ("state_lr=.inf", ["dynamics.state_lr=.inf"], 2, ["dynamics.state_lr"]),
    ("seed=-1", ["seed=-1"], 2, ["seed", "greater than or equal to 0"]),
    ("dt=.inf", ["integrator.dt=.inf"], 2, ["integrator.dt", "finite"]),
    ("rho=.inf", ["dynamics.rho=.inf"], 2, ["dynamics.rho", "finite"]),
    ("max_mb=.inf", ["record.max_mb=.inf"], 2, ["record.max_mb", "finite"]),
    ("divergence_bound=.inf", ["integrator.divergence_bound=.inf"], 2,
     ["integrator.divergence_bound", "finite"]),
    ("data.mean=.nan", ["data.mean=.nan"], 2, ["data.mean", "finite"]),
    ("memory_limit_gb=.inf", ["memory_limit_gb=.inf"], 2, ["memory_limit_gb"]),
    # other spellings of infinity and NaN reach the same check
    ("dt=inf (text)", ["integrator.dt=inf"], 2, ["integrator.dt", "finite"]),
    ("dt=Infinity", ["integrator.dt=Infinity"], 2, ["integrator.dt", "finite"]),
    ("dt=1e999", ["integrator.dt=1e999"], 2, ["integrator.dt", "finite"]),
    ("rho=nan (text)", ["dynamics.rho=nan"], 2, ["dynamics.rho", "finite"]),
    ("tau_lambda=nan (text)", ["dynamics.tau_lambda=nan"], 2, ["dynamics.tau_lambda"]),
    ("seed=.inf", ["seed=.inf"], 2, ["seed"]),
    ("width=.nan", ["network.width=.nan"], 2, ["network.width"]),
    # booleans are not numbers (pydantic's lax mode would read true as 1)
    ("steps=true", ["integrator.steps=true"], 2, ["integrator.steps", "boolean"]),
    ("dt=false", ["integrator.dt=false"], 2, ["integrator.dt", "boolean"]),
    ("width=true", ["network.width=true"], 2, ["network.width", "boolean"]),
    # integers: YAML's 1e12 is text; beyond int64 cannot be stored
    ("steps=1e12 (text)", ["integrator.steps=1e12"], 2, ["integrator.steps", "decimal point"]),
    ("steps=2^70", [f"integrator.steps={2 ** 70}"], 2, ["integrator.steps", "less than"]),
    ("seed=1e26", [f"seed={10 ** 26}"], 2, ["seed", "less than or equal"]),
    ("t_end/dt overflows", ["integrator.steps=null", "integrator.t_end=1e300",
                            "integrator.dt=1e-10"], 2, ["integrator.t_end", "too many steps"]),
    ("steps=1.5", ["integrator.steps=1.5"], 2, ["integrator.steps", "fractional"]),
    ("dt=0", ["integrator.dt=0"], 2, ["integrator.dt", "greater than 0"]),
    ("rho=-1", ["dynamics.rho=-1"], 2, ["dynamics.rho", "greater than 0"]),
    ("tau_lambda=-.inf", ["dynamics.tau_lambda=-.inf"], 2, ["dynamics.tau_lambda"]),
]

# ======================================================================= 7: memory guard
# Every size here is far beyond any machine (TB), so the default limit (half of this machine's
# memory) refuses them wherever the tests run. A run that long streams its records to disk
# (record.stream_mb), so it is the file-size guard record.max_mb that refuses it.
MEMORY = [
    ("steps=1e12", ["integrator.steps=1000000000000"], 2,
     ["record: the traces", "record.every", "TB", "record.max_mb"]),
    ("steps=1.0e+12", ["integrator.steps=1.0e+12"], 2, ["record.every", "record.max_mb"]),
    ("steps=1e12, no traces", ["integrator.steps=1000000000000", "record.variables=[]"], 2,
     ["record: the per-layer series", "integrator.steps", "record.max_mb"]),
    ("width=200000", ["network.width=200000"], 2,
     ["memory", "weights", "network.width", "TB"]),
    ("depth=1e10", ["network.depth=10000000000"], 2, ["memory", "weights", "network.depth",
                                                       "TB"]),
    ("depth=1e10, one layer traced", ["network.depth=10000000000", "record.layers=[1]"], 2,
     ["memory", "network.depth", "TB"]),
    ("batch_size=1e10", ["data.batch_size=10000000000"], 2, ["memory", "data.batch_size"]),
    ("input_dim=1e12", ["network.input_dim=1000000000000"], 2,
     ["memory", "network.input_dim"]),
    ("check_every=1e12", ["integrator.check_every=1000000000000"], 2,
     ["memory", "divergence-check buffer", "integrator.check_every"]),
    ("brian2 synapses", ["backend=brian2", "network.width=30000", "data.batch_size=1000"], 2,
     ["memory", "Brian2 objects", "brian2.construction"]),
    ("memory_limit_gb tiny", ["memory_limit_gb=1e-6"], 2, ["memory_limit_gb = 1e-06"]),
    ("memory_limit_gb=0", ["memory_limit_gb=0"], 2, ["memory_limit_gb", "greater than 0"]),
    ("record.max_mb tiny", ["integrator.steps=1000", "record.max_mb=0.0001"], 2,
     ["record.max_mb", "record.every"]),
]

# ======================================================================= CLI and --set
OVERRIDES = [
    ("--set without =", ["integrator"], 2, ["--set", "KEY.PATH=VALUE"]),
    ("--set empty key", ["=3"], 2, ["--set", "empty key path"]),
    ("--set double dot", ["network..width=3"], 2, ["network..width", "empty key path"]),
    ("--set below a value", ["network.width.x=3"], 2, ["network.width", "not a section"]),
    ("--set unparsable", ["network.width=[1,"], 2, ["--set network.width", "YAML"]),
    ("--set unknown key", ["network.widht=3"], 2, ["network.widht", "unknown key"]),
    ("--set unknown section", ["netwerk.width=3"], 2, ["netwerk", "unknown key"]),
    ("--set section to scalar", ["network=5"], 2, ["network", "valid dictionary"]),
    ("--set empty value", ["integrator.dt="], 2, ["integrator.dt", "valid number"]),
    ("--set integrator null", ["integrator=null"], 2, ["integrator", "run length"]),
    ("--set duplicate key in value", ["network={width: 4, width: 5}"], 2,
     ["--set network", "twice"]),
    ("--set scheme", ["integrator.scheme=leapfrog"], 2, ["integrator.scheme", "'euler'"]),
    ("--set variable", ["record.variables=[foo]"], 2, ["record.variables", "'credit'"]),
    ("--set layers out of range", ["record.layers=[9]"], 2, ["record.layers", "hidden layers"]),
    ("--set top-level number key", ["1=2"], 2, ["1: unknown key"]),
    ("--set data.path for synthetic", ["data.path=x.npz"], 2, ["data.path"]),
    ("--set weights missing", ["network.weights=/nonexistent/w.npz"], 2,
     ["network.weights", "does not exist"]),
    ("--set weights a directory", ["network.weights=/"], 2, ["network.weights", "directory"]),
]

SIMULATE_TABLE = [pytest.param(*c, id=f"5-systematic:{c[0]}") for c in SYSTEMATIC] + \
    [pytest.param(*c, id=f"5:{c[0]}") for c in NUMBERS] + \
    [pytest.param(*c, id=f"7:{c[0]}") for c in MEMORY] + \
    [pytest.param(*c, id=f"cli:{c[0]}") for c in OVERRIDES]


@pytest.mark.parametrize("name, overrides, code, needles", SIMULATE_TABLE)
def test_simulate_set(name, overrides, code, needles, work, capsys):
    out = work / "never.nc"
    t0 = time.perf_counter()
    got, err = cli(simulate_main, [work / "base.yaml", "--out", out, "--quiet",
                                   *sets(*overrides)], capsys)
    check(got, err, code, needles)
    assert not out.exists()
    assert time.perf_counter() - t0 < 5, "a refused config must be refused at once"


@pytest.mark.parametrize("key, value", [("integrator.dt", ".inf"), ("dynamics.rho", ".nan"),
                                        ("record.max_mb", ".inf"), ("data.mean", "-.inf")],
                         ids=lambda v: str(v))
def test_non_finite_in_the_file_is_refused_like_set(key, value, work, capsys):
    """5: the same value written in the YAML file gives the same error as through --set."""
    section, name = key.split(".")
    body = {k: v for k, v in BASE.items() if k != section}
    text = yaml.safe_dump(body) + f"{section}:\n" + "".join(
        f"  {k}: {v}\n" for k, v in BASE.get(section, {}).items() if k != name)
    path = work / f"file_{section}_{name}.yaml"
    path.write_text(text + f"  {name}: {value}\n")
    code, err = cli(simulate_main, [path, "--out", work / "never.nc", "--quiet"], capsys)
    check(code, err, 2, [key, "finite", path.name])


def test_tau_lambda_inf_is_the_documented_exception(work, capsys):
    """5: dynamics.tau_lambda: .inf runs (multipliers frozen: alpha = 0)."""
    out = work / "tau_inf.nc"
    code, err = cli(simulate_main, [work / "base.yaml", "--out", out, "--quiet",
                                    *sets("dynamics.tau_lambda=.inf")], capsys)
    assert code == 0, err
    assert open_results(out).attrs["alpha"] == 0.0


def test_huge_run_plans_its_record_steps_without_an_array_of_all_steps():
    """7: integrator.steps = 1e12 with record.every = 1e9 is a valid (long) run; its record
    plan has 1001 steps and is made at once."""
    cfg = load_config(raw(integrator={"steps": 10 ** 12}, record={"every": 10 ** 9}))
    t0 = time.perf_counter()
    plan = plan_recording(cfg)
    assert len(plan.steps) == 1001 and plan.steps[-1] == 10 ** 12
    assert time.perf_counter() - t0 < 0.5


# ======================================================================= 11 + config files
FILES = [
    ("empty file", "", 2, ["is empty", "integrator"]),
    ("only a comment", "# nothing here\n", 2, ["is empty", "run length"]),
    ("no integrator", "network: {width: 4}\n", 2, ["integrator", "run length is missing"]),
    ("integrator: null", "integrator:\n", 2, ["integrator", "run length is missing"]),
    ("integrator: {}", "integrator: {}\n", 2, ["integrator", "run length"]),
    ("top level a list", "- 1\n- 2\n", 2, ["top level must be a mapping", "list"]),
    ("top level a string", "hello\n", 2, ["top level must be a mapping", "str"]),
    ("duplicate section", "integrator: {steps: 3}\nintegrator: {steps: 5}\n", 2,
     ["'integrator' twice"]),
    ("duplicate key", "integrator: {steps: 3, steps: 5}\n", 2, ["'steps' twice"]),
    ("tab indentation", "integrator:\n\tsteps: 3\n", 2, ["not valid YAML"]),
    ("unclosed bracket", "integrator: {steps: 3\n", 2, ["not valid YAML"]),
    ("binary", b"\xff\xfe\x00\x01\x80garbage", 2, ["not a UTF-8 text file"]),
    ("unknown top-level key", "integrator: {steps: 3}\nnetwerk: {width: 4}\n", 2,
     ["netwerk", "unknown key"]),
    ("section is a list", "integrator: {steps: 3}\nnetwork: [1, 2]\n", 2, ["network"]),
    ("key typo in a section", "integrator: {stpes: 3}\n", 2, ["integrator.stpes", "unknown key"]),
]


@pytest.mark.parametrize("name, content, code, needles", FILES, ids=[f[0] for f in FILES])
def test_config_file(name, content, code, needles, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    got, err = cli(simulate_main, [path, "--out", tmp_path / "o.nc", "--quiet"], capsys)
    check(got, err, code, [*needles, "c.yaml"])
    assert not (tmp_path / "o.nc").exists()


# (id, argv with {w} for the work directory, exit code, needles)
PATHS = [
    ("config missing", ["{w}/nope.yaml"], 2, ["nope.yaml", "does not exist"]),
    ("config is a directory", ["{w}"], 2, ["is a directory"]),
    ("config path empty", [""], 2, ["config file", "empty path"]),
    ("config under a file", ["{w}/afile/c.yaml"], 2, ["c.yaml", "does not exist"]),
    ("--out empty", ["{w}/base.yaml", "--out", ""], 2, ["--out", "empty path"]),
    ("--out a directory", ["{w}/base.yaml", "--out", "{w}"], 2, ["--out", "is a directory"]),
    ("--out under a file", ["{w}/base.yaml", "--out", "{w}/afile/o.nc"], 2,
     ["afile", "is a file, not a directory"]),
    ("output: in the config is a directory", ["{w}/base.yaml", "--set", "output={w}"], 2,
     ["is a directory"]),
    ("unknown option", ["{w}/base.yaml", "--bogus"], 2, ["unrecognized arguments: --bogus"]),
    ("--device gpu", ["{w}/base.yaml", "--device", "gpu"], 2, ["--device", "'gpu'"]),
    ("--backend jax", ["{w}/base.yaml", "--backend", "jax"], 2, ["--backend", "'jax'"]),
    ("no config argument", [], 2, ["the following arguments are required: config"]),
]


def fill(argv: list[str], work: Path) -> list[str]:
    return [a.replace("{w}", str(work)) for a in argv]


@pytest.mark.parametrize("name, argv, code, needles", PATHS, ids=[p[0] for p in PATHS])
def test_simulate_paths_and_arguments(name, argv, code, needles, work, capsys):
    argv = fill(argv, work)
    if "--out" not in argv and "--set" not in argv:
        argv += ["--out", str(work / "unused.nc")]
    got, err = cli(simulate_main, [*argv, "--quiet"], capsys)
    check(got, err, code, needles)


def test_unreadable_config_and_read_only_output(tmp_path, capsys):
    cfg = tmp_path / "secret.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    cfg.chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        run = lambda argv: cli_with_permissions("ctpc.simulate", simulate_main, argv, capsys)
        check(*run([cfg, "--quiet"]), 2, ["secret.yaml", "cannot be read"])
        check(*run([_write(tmp_path, BASE), "--out", locked / "o.nc", "--quiet"]), 2,
              ["not writable"])
    finally:
        cfg.chmod(0o600)
        locked.chmod(0o700)


def _write(d: Path, content: dict, name="cfg.yaml") -> Path:
    path = d / name
    path.write_text(yaml.safe_dump(content))
    return path


# ======================================================================= 3, 9: sweep arguments
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SWEEPS = [
    # class 3: output paths
    ("3:--out a directory", ["--out", "{w}"], 2, ["--out", "is a directory"]),
    ("3:--out empty", ["--out", ""], 2, ["--out", "empty path"]),
    ("3:--out under a file", ["--out", "{w}/afile/s.nc"], 2,
     ["afile", "is a file, not a directory"]),
    ("3:OUT.cells is a file", ["--out", "{w}/taken.nc"], 2, ["taken.cells", "is a file"]),
    ("3:OUT.cells is OUT", ["--out", "{w}/x.cells"], 2, ["x.cells", "must end in .nc"]),
    ("3:read-only dir (as root: a dir under a file)", ["--out", "{w}/afile/ro/s.nc"], 2,
     ["afile", "not a directory"]),
    ("3:dry run checks the paths", ["--dry-run", "--out", "{w}"], 2, ["is a directory"]),
    # class 9: scheduler addresses
    ("9:http (dashboard)", ["--scheduler", "http://127.0.0.1:8787"], 2,
     ["--scheduler", "http://", "dashboard", "tcp://"]),
    ("9:https", ["--scheduler", "https://dask.example.org/status"], 2, ["https://"]),
    ("9:ftp", ["--scheduler", "ftp://h:21"], 2, ["unknown scheme 'ftp'", "tcp"]),
    ("9:no port", ["--scheduler", "tcp://localhost"], 2, ["tcp://localhost", "HOST:PORT"]),
    ("9:bare host", ["--scheduler", "localhost"], 2, ["no SCHEME:// given"]),
    ("9:port 0", ["--scheduler", "tcp://localhost:0"], 2, ["port must be a number"]),
    ("9:port 99999", ["--scheduler", "tcp://localhost:99999"], 2, ["port must be a number"]),
    ("9:port not a number", ["--scheduler", "tcp://localhost:abc"], 2,
     ["port must be a number"]),
    ("9:empty", ["--scheduler", ""], 2, ["--scheduler", "empty address"]),
    ("9:dry run checks the address", ["--dry-run", "--scheduler", "http://h:1"], 2,
     ["dashboard"]),
    # sweep arguments and sweep: sections
    ("--workers 0", ["--workers", "0"], 2, ["--workers", ">= 1"]),
    ("--workers with --scheduler", ["--workers", "2", "--scheduler", "tcp://h:8786"], 2,
     ["--workers", "local cluster only"]),
    ("--workers abc", ["--workers", "abc"], 2, ["--workers", "invalid int value"]),
    ("no sweep section", ["--set", "sweep=null"], 2, ["no 'sweep:' section"]),
    ("sweep values not a list", ["--set", "sweep.seed=5"], 2, ["sweep.seed", "list"]),
    ("sweep value .inf", ["--set", "sweep.integrator.dt=[1.0, .inf]"], 2,
     ["integrator.dt=inf", "finite"]),
    ("sweep cell too big", ["--set", "sweep.network.width=[4, 200000]"], 2,
     ["network.width=200000", "memory", "weights"]),
    ("sweep unknown key", ["--set", "sweep.integrator.dtt=[1.0]"], 2, ["integrator.dtt"]),
    ("sweep the output", ["--set", "sweep.output=[a.nc]"], 2, ["cannot be swept"]),
]


@pytest.mark.parametrize("name, argv, code, needles", SWEEPS, ids=[c[0] for c in SWEEPS])
def test_sweep_refused_before_any_cluster(name, argv, code, needles, work, no_cluster, capsys):
    (work / "taken.cells").write_text("a file where the cells directory would go\n")
    argv = fill(argv, work)
    if "--out" not in argv:
        argv += ["--out", str(work / "refused.nc")]
    got, err = cli(sweep_main, [work / "sweep.yaml", *argv, "--quiet"], capsys)
    check(got, err, code, needles)
    assert not (work / "refused.cells").exists() and not (work / "refused.nc").exists()


def test_sweep_read_only_directory(tmp_path, no_cluster, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    _write(tmp_path, raw(sweep={"seed": [0, 1]}), "s.yaml")
    cells = tmp_path / "ro.cells"
    cells.mkdir()
    locked.chmod(0o500)
    cells.chmod(0o500)
    try:
        run = lambda argv: cli_with_permissions("ctpc.sweep", sweep_main, argv, capsys)
        check(*run([tmp_path / "s.yaml", "--out", locked / "s.nc"]), 2, ["not writable"])
        check(*run([tmp_path / "s.yaml", "--out", tmp_path / "ro.nc"]), 2,
              ["ro.cells", "not writable"])
    finally:
        locked.chmod(0o700)
        cells.chmod(0o700)


def test_refused_scheduler_fails_fast_and_leaves_nothing(work, capsys):
    """9 + 12: nothing listens on the port: exit 2 within seconds (not distributed's 20 s
    timeout), no OUT.cells/ left behind."""
    port = free_port()
    out = work / "refused_port.nc"
    t0 = time.perf_counter()
    code, err = cli(sweep_main, [work / "sweep.yaml", "--out", out, "--quiet",
                                 "--scheduler", f"tcp://127.0.0.1:{port}"], capsys)
    check(code, err, 2, [f"127.0.0.1:{port}", "connection refused", "dask scheduler"])
    assert time.perf_counter() - t0 < 5
    assert not companion_path(out, "cells").exists() and not out.exists()


def test_failed_cluster_start_leaves_no_cells_directory(work, monkeypatch, capsys):
    """12: whatever stops the start (here a cluster that cannot start), OUT.cells/ is not
    left behind empty."""
    import contextlib

    @contextlib.contextmanager
    def broken(**_):
        raise ConfigError("the cluster could not start (simulated)")
        yield
    monkeypatch.setattr(sweep_mod, "dask_client", broken)
    out = work / "nostart.nc"
    check(*cli(sweep_main, [work / "sweep.yaml", "--out", out, "--quiet"], capsys), 2,
          ["could not start"])
    assert not companion_path(out, "cells").exists()


# ======================================================================= sweeps that run
@pytest.fixture(scope="module")
def inproc():
    from distributed import Client
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        yield client.scheduler.address


def run_sweep_cli(cfg: Path, out: Path, address: str, capsys, *extra) -> tuple[int, str, str]:
    try:
        code = sweep_main([str(cfg), "--out", str(out), "--scheduler", address, "--quiet",
                           *map(str, extra)])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


def _npz(path: Path, seed: int, n: int = 6) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((n, 5)), y=np.eye(3)[rng.integers(0, 3, n)])


def test_rewritten_data_file_reruns_the_cells(tmp_path, inproc, capsys):
    """1: the same path with other data: new cell keys, the cells run again, other results."""
    data = tmp_path / "data.npz"
    _npz(data, 0)
    cfg = _write(tmp_path, raw(data={"source": "npz", "path": str(data), "batch_size": 2},
                               sweep={"seed": [0, 1]}))
    out = tmp_path / "d.nc"
    assert run_sweep_cli(cfg, out, inproc, capsys)[0] == 0
    first = open_results(out).load()
    keys = {p.name for p in companion_path(out, "cells").glob("*.nc")}
    _npz(data, 1)                                  # overwrite: other examples, same shape
    code, stdout, _ = run_sweep_cli(cfg, out, inproc, capsys, "--dry-run")
    assert code == 0 and stdout.count("to run") == 2
    assert run_sweep_cli(cfg, out, inproc, capsys)[0] == 0
    second = open_results(out).load()
    assert {p.name for p in companion_path(out, "cells").glob("*.nc")} - keys   # new files
    assert not np.allclose(first.loss.values, second.loss.values)


def test_rewritten_weights_file_reruns_the_cells(tmp_path, inproc, capsys):
    """1: network.weights rewritten at the same path."""
    rng = np.random.default_rng(3)
    shapes = [(4, 5), (4, 4), (3, 4)]
    weights = tmp_path / "w.npz"
    np.savez(weights, **{f"w{i + 1}": rng.standard_normal(s) for i, s in enumerate(shapes)})
    cfg = _write(tmp_path, raw(network={"weights": str(weights)}, sweep={"seed": [0, 1]}))
    out = tmp_path / "w.nc"
    assert run_sweep_cli(cfg, out, inproc, capsys)[0] == 0
    before = open_results(out).load()
    np.savez(weights, **{f"w{i + 1}": rng.standard_normal(s) for i, s in enumerate(shapes)})
    assert run_sweep_cli(cfg, out, inproc, capsys)[0] == 0
    after = open_results(out).load()
    assert not np.allclose(before.bp_cos.values, after.bp_cos.values)


def test_idx_directory_digest_covers_its_idx_files_only(tmp_path):
    """1: data.source: idx hashes the directory's train-*/t10k-* files (names and bytes)."""
    d = tmp_path / "mnist"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / name).write_bytes(name.encode() * 10)
    cfg = load_config(raw(data={"source": "idx", "path": str(d), "batch_size": 2}),
                      resolve_files=False)
    first = input_digests(cfg)["data.path"]
    (d / "README.txt").write_text("not an IDX file")
    assert input_digests(cfg)["data.path"] == first
    (d / "train-labels-idx1-ubyte").write_bytes(b"other labels")
    second = input_digests(cfg)["data.path"]
    assert second != first
    (d / "train-labels-idx1-ubyte").rename(d / "train-labels-idx1-ubyte.gz")
    assert input_digests(cfg)["data.path"] != second          # names count too


def test_sweep_without_input_files_keeps_its_cell_keys():
    """1: a config that names no file hashes as before (no existing sweep is invalidated)."""
    import hashlib
    import json
    cfg = load_config(raw(), resolve_files=False)
    d = cfg.to_dict()
    for k in ("name", "description", "output", "sweep", "memory_limit_gb"):
        d.pop(k)
    # keys added later (network.bias, dynamics.noise, dynamics.delay, brian2.errors, ...):
    # hashed only when set, so at their defaults the key is the one of before
    from ctpc.config.identity import ADDED_KEYS
    for dotted, unset in ADDED_KEYS.items():
        section, _, key = dotted.rpartition(".")
        assert d[section].pop(key) == unset, dotted
    old = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    from ctpc.sweep.cells import cell_key
    assert cell_key(cfg) == old


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, inproc):
    d = tmp_path_factory.mktemp("done")
    cfg = _write(d, raw(sweep={"seed": [0, 1]}))
    out = d / "s.nc"
    assert sweep_main([str(cfg), "--out", str(out), "--scheduler", inproc, "--quiet"]) == 0
    return cfg, out


def _damage_truncate(cells, victim, other):
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2])


def _damage_empty(cells, victim, other):
    victim.write_bytes(b"")


def _damage_other_cell(cells, victim, other):
    shutil.copy(other, victim)


def _damage_text(cells, victim, other):
    victim.write_text("not netCDF\n")


DAMAGE = [("8:truncated", _damage_truncate, "cannot be opened"),
          ("8:empty", _damage_empty, "cannot be opened"),
          ("8:another cell's file", _damage_other_cell, "sweep_key"),
          ("8:text", _damage_text, "cannot be opened")]


@pytest.mark.parametrize("name, damage, why", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_cell_file_is_recomputed(name, damage, why, finished_sweep, tmp_path, inproc,
                                         capsys):
    """8: a damaged file in OUT.cells/ no longer blocks the sweep: --dry-run says so, the run
    warns in one line, computes the cell again and writes the combined file."""
    cfg, done_out = finished_sweep
    out = tmp_path / "s.nc"
    shutil.copytree(companion_path(done_out, "cells"), companion_path(out, "cells"))
    files = sorted(companion_path(out, "cells").glob("*.nc"))
    victim, other = files
    damage(companion_path(out, "cells"), victim, other)
    code, stdout, _ = run_sweep_cli(cfg, out, inproc, capsys, "--dry-run")
    assert code == 0
    assert stdout.count("damaged, will rerun") == 1 and "1 damaged" in stdout, stdout
    assert f"{victim.stem}  damaged, will rerun" in stdout
    code, _, err = run_sweep_cli(cfg, out, inproc, capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "damaged" in line]
    assert len(warning) == 1 and victim.name in warning[0] and why in warning[0], err
    ds = open_results(out)
    assert list(ds.status.values) == ["ok", "ok"]
    with open_results(victim) as cell:
        assert cell.attrs["sweep_key"] == victim.stem
    assert "0 damaged" not in run_sweep_cli(cfg, out, inproc, capsys, "--dry-run")[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_of_the_combined_file_is_removed(tmp_path, inproc, capsys):
    """10: a killed write of the combined file leaves OUT.tmp-PID; the next run removes it if
    its writer is gone, and keeps a temporary whose writer is alive."""
    cfg = _write(tmp_path, raw(sweep={"seed": [0, 1]}))
    out = tmp_path / "s.nc"
    dead = tmp_path / f"s.nc.tmp-{_dead_pid()}"
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = tmp_path / f"s.nc.tmp-{live_proc.pid}"
    try:
        dead.write_bytes(b"half a file")
        live.write_bytes(b"being written")
        assert run_sweep_cli(cfg, out, inproc, capsys)[0] == 0
        assert not dead.exists() and live.exists() and out.exists()
    finally:
        live_proc.kill()
        live_proc.wait()


def test_stale_temporary_of_a_run_is_removed(tmp_path, capsys):
    """10: the same for ctpc.simulate's output."""
    out = tmp_path / "r.nc"
    dead = tmp_path / f"r.nc.tmp-{_dead_pid()}"
    dead.write_bytes(b"half a file")
    code, err = cli(simulate_main, [_write(tmp_path, BASE), "--out", out, "--quiet"], capsys)
    assert code == 0 and out.exists() and not dead.exists(), err


# ======================================================================= 10: signals
LONG = raw(integrator={"steps": 10 ** 8}, record={"every": 10 ** 7, "samples": [0]})


LONG_BRIAN2 = raw(backend="brian2", integrator={"scheme": "euler", "steps": 10 ** 7},
                  record={"every": 10 ** 6, "samples": [0]})


@pytest.mark.parametrize("config, sig, code, word", [
    (LONG, signal.SIGINT, 130, "interrupted"),
    (LONG, signal.SIGTERM, 143, "terminated"),
    # Brian2 installs its own Ctrl-C handler (it would end the run early as if finished), and
    # its set-up runs weakref callbacks where a raised KeyboardInterrupt would be dropped
    (LONG_BRIAN2, signal.SIGINT, 130, "interrupted"),
], ids=["10:SIGINT", "10:SIGTERM", "10:SIGINT brian2"])
def test_signal_mid_run(config, sig, code, word, tmp_path):
    """10: a real `python -m ctpc.simulate` gets the signal while it integrates: exit code,
    one line on stderr, no traceback, nothing under the output name."""
    cfg = _write(tmp_path, config)
    out = tmp_path / "long.nc"
    proc = subprocess.Popen([sys.executable, "-m", "ctpc.simulate", str(cfg), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    os.set_blocking(proc.stderr.fileno(), False)
    seen, deadline = b"", time.monotonic() + 90
    while b"step" not in seen:           # the progress bar: the integration loop has started
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not start: {seen!r}")
        time.sleep(0.05)
        seen += proc.stderr.read() or b""
    time.sleep(0.2)
    proc.send_signal(sig)
    os.set_blocking(proc.stderr.fileno(), True)
    try:
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = (seen + rest).decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    message = err.rsplit("\r", 1)[-1].strip()        # after the progress bar's last redraw
    assert message.count("\n") == 0 and message.startswith(f"ctpc: {word}"), err
    assert not out.exists() and not list(tmp_path.glob("long.nc*"))


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


WEAKREF_SIGNAL = """
import os, signal, sys, time, weakref
from ctpc.cli import common as cli
class Thing: pass
def body():
    thing = Thing()
    def callback(ref):              # Python drops exceptions raised in here
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        for _ in range(100000): pass     # the handler runs inside the callback
    ref = weakref.ref(thing, callback)
    del thing
    t = time.monotonic()
    while time.monotonic() - t < 20: pass
    return 0
sys.exit(cli.run_main("ctpc", body))
"""


@pytest.mark.parametrize("name, code, word", [("SIGINT", 130, "interrupted"),
                                              ("SIGTERM", 143, "terminated")],
                         ids=["10:SIGINT in a weakref callback",
                              "10:SIGTERM in a weakref callback"])
def test_signal_inside_a_callback_is_not_lost(name, code, word):
    """10: a signal whose exception Python would drop ("Exception ignored in ...") is delivered
    again: the command still stops, in one line."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", WEAKREF_SIGNAL, name], env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().startswith(f"ctpc: {word}") and \
        proc.stderr.strip().count("\n") == 0, proc.stderr
    assert time.monotonic() - t0 < 15


# ======================================================================= 12: reading results
def _results_cases(d: Path) -> list:
    good = d / "good.nc"
    ctpc.simulate(raw(), out=good)
    data = good.read_bytes()
    (d / "half.nc").write_bytes(data[:len(data) // 2])
    (d / "tail.nc").write_bytes(data[:-64])
    (d / "empty.nc").write_bytes(b"")
    (d / "text.nc").write_text("time,loss\n0,1\n")
    (d / "run.yaml").write_text(yaml.safe_dump(BASE))
    return [("truncated at half", d / "half.nc", "half.nc", "truncated"),
            ("truncated tail", d / "tail.nc", "tail.nc", "truncated"),
            ("empty file", d / "empty.nc", "empty.nc", "not a readable netCDF"),
            ("text file", d / "text.nc", "text.nc", "not a readable netCDF"),
            ("a YAML config", d / "run.yaml", "run.yaml", "not a readable netCDF"),
            ("a directory", d, str(d), "is a directory"),
            ("missing", d / "nope.nc", "nope.nc", "no results file")]


RESULT_IDS = ["truncated at half", "truncated tail", "empty file", "text file", "a YAML config",
              "a directory", "missing"]


@pytest.fixture(scope="module")
def results_cases(tmp_path_factory):
    return {c[0]: c for c in _results_cases(tmp_path_factory.mktemp("results"))}


@pytest.mark.parametrize("name", RESULT_IDS, ids=[f"12:{n}" for n in RESULT_IDS])
def test_open_results_gives_a_clean_message(name, results_cases):
    _, path, needle, what = results_cases[name]
    with pytest.raises(ResultsError) as info:
        open_results(path)
    assert needle in str(info.value) and what in str(info.value)
    assert isinstance(info.value, ctpc.InputError)    # exit 2 where a command reads it
