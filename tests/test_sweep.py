"""Sweeps on Dask: the product of sweep values becomes one dataset with the sweep keys as
dimensions (padded across depths, statuses per cell); crashes and divergences are recorded
without losing other cells; a killed sweep resumes without recomputing finished cells; a bad
value is a ConfigError before any cluster starts."""
import glob
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
import ctpc.sweep as sweep_mod
from ctpc.config.schema import ConfigError
from ctpc.config.paths import companion_path
from ctpc.sweep import plan_sweep, run_sweep, select_cell
from ctpc.cli.sweep import main as sweep_main

ROOT = Path(__file__).resolve().parent.parent

# tau_h = 30, tau_lambda = 1, dt = 3: alpha = dt/tau_lambda = 3 > rho = 1, so explicit Euler is
# unstable at any eta_h (spec 5.2: |z|^2 = 1 - k(rho - a) > 1) while semi-implicit is stable
# (k rho < 2 and k (2 rho + a) < 4 with k = eta_h sigma^2 = 0.1 sigma^2, sigma^2 <~ 5).
BASE = {
    "name": "tiny_sweep", "dtype": "float64", "device": "cpu",
    "network": {"width": 4, "depth": 3, "activation": "tanh", "input_dim": 5, "output_dim": 3},
    "data": {"source": "synthetic", "batch_size": 3},
    "dynamics": {"method": "pcalm", "rho": 1.0, "tau_h": 30.0, "tau_lambda": 1.0},
    "integrator": {"scheme": "semi_implicit", "dt": 3.0, "steps": 40},
    "record": {"every": 1, "samples": [0]},
}


def with_sweep(spec, **changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw.update(changes)
    raw["sweep"] = spec
    return raw


SIX_CELLS = {"integrator.scheme": ["euler", "semi_implicit", "heun"],
             # linked keys: one dimension, the budget grows with depth
             "network.depth, integrator.steps": [[3, 40], [5, 150]]}


@pytest.fixture(scope="module")
def six_cell_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "six.nc"
    t0 = time.perf_counter()
    ds = run_sweep(with_sweep(SIX_CELLS), out=out, n_workers=2, progress=False)
    return ds, out, time.perf_counter() - t0


def test_six_cells_on_local_cluster(six_cell_sweep):
    ds, out, wall = six_cell_sweep
    print(f"6-cell sweep on a 2-process local cluster: {wall:.1f} s")
    assert ds.credit_norm.dims == ("integrator.scheme", "network.depth", "time", "layer")
    assert list(ds["integrator.scheme"].values) == ["euler", "semi_implicit", "heun"]
    assert list(ds["network.depth"].values) == [3, 5]
    assert list(ds["integrator.steps"].values) == [40, 150]          # linked coordinate
    assert ds.sizes["layer"] == 4 and ds.sizes["weight"] == 5
    status = ds.status.to_pandas()
    assert status.loc["euler", 5] == "diverged"
    assert (status.loc["semi_implicit"] == "ok").all()
    assert ds.attrs["n_cells"] == 6 and ds.attrs["n_error"] == 0
    # depth 3 is padded along layer/weight; the mask says so and the padding is NaN
    shallow = ds.sel({"network.depth": 3})
    assert shallow.layer_mask.values.tolist() == [[True, True, False, False]] * 3
    assert shallow.weight_mask.values.sum(-1).tolist() == [3, 3, 3]
    assert np.isnan(shallow.credit_norm.sel(layer=[3, 4])).all()
    assert np.isfinite(shallow.credit_norm.sel(layer=[1, 2]).where(shallow.time_mask)).sum() > 0
    # time is the union of the budgets; the short budget and the divergence end early
    assert ds.time_mask.sum("time").sel({"network.depth": 3}).values.tolist() == [41] * 3
    diverged = ds.sel({"integrator.scheme": "euler", "network.depth": 5})
    assert int(diverged.time_mask.sum()) < 151 and np.isfinite(float(diverged.diverged_at))
    # the combined file on disk is what was returned, and one file per cell exists
    on_disk = ctpc.open_results(out)
    assert (on_disk.status == ds.status).all()
    assert len(list(companion_path(out, "cells").glob("*.nc"))) == 6


def test_a_cell_equals_the_same_run_done_directly(six_cell_sweep):
    ds, _, _ = six_cell_sweep
    cell = select_cell(ds, {"integrator.scheme": "heun", "network.depth": 5})
    raw = with_sweep(None)
    raw.pop("sweep")
    raw["integrator"].update(scheme="heun", steps=150)
    raw["network"]["depth"] = 5
    direct = ctpc.simulate(raw)
    assert cell.attrs["status"] == "ok" and cell.attrs["dt"] == 3.0
    # same CPU float64 computation in another process: identical to the bit
    np.testing.assert_array_equal(cell.credit_norm.values, direct.credit_norm.values)
    np.testing.assert_array_equal(cell.bp_cos.values, direct.bp_cos.values)
    full = ctpc.open_results(Path(ds.attrs["cells_dir"]) / str(
        ds.cell_file.sel({"integrator.scheme": "heun", "network.depth": 5}).values))
    assert full.h.dims == ("time", "layer", "sample", "unit")      # traces stay per cell


def test_rerun_reuses_every_finished_cell(six_cell_sweep, monkeypatch):
    ds, out, _ = six_cell_sweep

    def no_cluster(**_):
        raise AssertionError("a finished sweep must not start a cluster again")
    monkeypatch.setattr(sweep_mod, "dask_client", no_cluster)
    again = run_sweep(with_sweep(SIX_CELLS), out=out, progress=False)
    np.testing.assert_array_equal(again.credit_norm.values, ds.credit_norm.values)


def test_crashed_cell_is_recorded_and_retried(tmp_path, monkeypatch):
    """A cell that raises gets status 'error' with its message; the others are kept (a group
    of replicas that crashes is rerun cell by cell), and a rerun recomputes only the crashed
    cell."""
    from distributed import Client

    import ctpc.sim.simulation
    real = ctpc.sim.simulation.simulate_replicas
    broken, calls = {"seed 1": True}, []

    def flaky(configs, *args, **kwargs):
        seeds = sorted(c.seed for c in configs)       # the cells' resolved configs
        calls.append(seeds)
        if 1 in seeds and broken["seed 1"]:
            raise RuntimeError("boom in seed 1")
        return real(configs, *args, **kwargs)

    monkeypatch.setattr(ctpc.sim.simulation, "simulate_replicas", flaky)   # an in-process client sees it
    raw = with_sweep({"seed": [0, 1, 2]})
    out = tmp_path / "flaky.nc"
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        first = run_sweep(raw, out=out, client=client, progress=False)
        assert calls[0] == [0, 1, 2]          # the three seeds ran as one replica group
        assert first.status.values.tolist() == ["ok", "error", "ok"]
        assert "RuntimeError: boom in seed 1" in str(first.error.sel(seed=1).values)
        assert np.isnan(first.credit_norm.sel(seed=1)).all()
        assert np.isfinite(first.credit_norm.sel(seed=0).isel(time=-1)).all()
        broken["seed 1"] = False
        calls.clear()
        second = run_sweep(raw, out=out, client=client, progress=False)
    assert calls == [[1]]             # only the crashed cell ran again
    assert second.status.values.tolist() == ["ok", "ok", "ok"]


@pytest.mark.parametrize("spec, needle", [
    ({"integrator.scheme": ["euler", "rk5"]}, "integrator.scheme"),
    ({"integrator.dtt": [0.5, 1.0]}, "integrator.dtt"),
    ({"integrator.dt": []}, "non-empty list"),
    ({"integrator.dt": [0.5, 0.5]}, "duplicate"),
    ({"network.depth, integrator.steps": [[3, 10], [4]]}, "2 values"),
    ({"integrator.dt": [[0.5]]}, "numbers, strings or booleans"),
    ({"output": ["a.nc"]}, "cannot be swept"),
])
def test_bad_sweep_is_a_config_error_before_any_cluster(spec, needle, tmp_path, monkeypatch,
                                                        capsys):
    def no_cluster(**_):
        raise AssertionError("no cluster may start for an invalid sweep")
    monkeypatch.setattr(sweep_mod, "dask_client", no_cluster)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_sweep(spec)))
    assert sweep_main([str(path), "--out", str(tmp_path / "bad.nc"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not (tmp_path / "bad.cells").exists()


def test_dry_run_lists_cells(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(with_sweep({"seed": [0, 1], "integrator.dt": [1.0, 2.0]})))
    assert sweep_main([str(path), "--dry-run", "--out", str(tmp_path / "s.nc")]) == 0
    out = capsys.readouterr().out
    assert out.count("to run") == 4 and "4 cells, 0 done" in out
    # --set adds an axis; a dotted key given through --set arrives nested and means the same
    assert sweep_main([str(path), "--dry-run", "--out", str(tmp_path / "s.nc"),
                       "--set", "sweep.network.width=[4, 6]"]) == 0
    assert "8 cells, 0 done" in capsys.readouterr().out


def child_env() -> dict:
    """The environment of a child Python: this checkout's ctpc first on the path."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_slow_sweep(tmp_path, name):
    """Start `python -m ctpc.sweep` on one worker, in its own process group, over 6 cells:
    cheap ones (10 steps) and slow ones (10000 steps, ~0.5 s each), and return once the first
    cell file exists, so that seconds of work remain. Returns (process, config path, combined
    output path, cells directory)."""
    raw = with_sweep({"seed": [0, 1, 2], "integrator.steps": [10, 10000]},
                     record={"every": 1000, "samples": [0]})
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / f"{name}.nc"
    cells = companion_path(out, "cells")
    proc = subprocess.Popen([sys.executable, "-m", "ctpc.sweep", str(cfg), "--out", str(out),
                             "--workers", "1", "--quiet"], env=child_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (cells.exists() and any(cells.glob("*.nc"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no cell file appeared; sweep stderr:\n{proc.communicate()[1]}")
        time.sleep(0.02)
    return proc, cfg, out, cells


def test_killed_sweep_resumes_without_recomputing(tmp_path):
    """A real SIGKILL of `python -m ctpc.sweep` (client, scheduler and workers) after the first
    cell file appears; the rerun completes the sweep and leaves finished cells untouched.

    One worker runs 6 cells in order: cheap ones (10 steps) and slow ones (10000 steps, ~0.5 s
    each), so after the first file there are still seconds of work left: the kill always
    lands mid-sweep, without any timing assumption finer than that."""
    proc, cfg, out, cells = start_slow_sweep(tmp_path, "resume")
    os.killpg(proc.pid, signal.SIGKILL)      # the whole process group: client and workers
    proc.communicate()
    _wait_group_gone(proc.pid)
    finished = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in cells.glob("*.nc")}
    assert 1 <= len(finished) < 6, finished
    assert not out.exists()                   # the combined file is written only at the end

    rerun = subprocess.run(proc.args, env=child_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in cells.glob("*.nc")}
    assert len(after) == 6
    assert all(after[name] == stamp for name, stamp in finished.items())   # not recomputed
    ds = ctpc.open_results(out)
    assert ds.status.values.ravel().tolist() == ["ok"] * 6
    # The kill may land while a cell file is being written: its temporary is removed by the
    # rerun, and no file under a final name is ever truncated (each one opens).
    assert not any(cells.glob("*.tmp*"))
    for path in cells.glob("*.nc"):
        with ctpc.open_results(path) as cell:
            assert cell.attrs["status"] == "ok"


def _wait_group_gone(pgid, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"processes of the killed sweep (group {pgid}) are still alive")


def test_plan_hash_follows_the_config(tmp_path):
    """Changing a non-swept key gives new cell hashes: stale cells are never reused."""
    a = plan_sweep(with_sweep({"seed": [0, 1]}), out=tmp_path / "a.nc")
    b = plan_sweep(with_sweep({"seed": [0, 1]}, network={**BASE["network"], "width": 5}),
                   out=tmp_path / "a.nc")
    assert {c.key for c in a.cells}.isdisjoint({c.key for c in b.cells})
    with pytest.raises(ConfigError, match="no 'sweep:' section"):
        plan_sweep(BASE)


@pytest.mark.parametrize("model", sorted(glob.glob(str(ROOT / "models" / "sweeps" / "*.yaml"))),
                         ids=lambda m: Path(m).stem)
def test_shipped_sweep_models_validate(model, tmp_path, mnist_files):
    plan = plan_sweep(model, out=tmp_path / "x.nc")
    assert len(plan.cells) >= 2 and not plan.done


def test_existing_cluster_by_address(tmp_path):
    """--scheduler ADDRESS: the sweep runs on a cluster it did not start (here a one-worker
    cluster started by the test, reached only through its tcp:// address) and leaves it up."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        out = tmp_path / "remote.nc"
        spec = {"integrator.scheme": ["euler", "semi_implicit"]}
        assert sweep_main([_write(tmp_path, with_sweep(spec)), "--out", str(out),
                           "--scheduler", cluster.scheduler_address, "--quiet"]) == 0
        ds = ctpc.open_results(out)
        assert list(ds.status.values) == ["ok", "ok"]
        direct = ctpc.simulate(BASE)                       # semi_implicit, as in the base
        cell = select_cell(ds, {"integrator.scheme": "semi_implicit"})
        np.testing.assert_array_equal(cell.credit_norm.values, direct.credit_norm.values)
        with Client(cluster.scheduler_address) as client:   # still running afterwards
            assert len(client.scheduler_info()["workers"]) == 1


def _write(tmp_path, raw) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# ----------------------------------------------------------------------------- Brian2 cells
# `import brian2` installs a SIGINT handler with signal.signal, which Python allows only in the
# main thread; Dask runs tasks in worker threads. ctpc.sweep.cluster.import_brian2_in_worker
# imports it there without that handler (see its docstring).
BRIAN2_SWEEP = {**BASE, "name": "b2_sweep", "backend": "brian2",
                "integrator": {"scheme": "euler", "dt": 1.0, "steps": 6},
                "dynamics": {"method": "pcalm", "rho": 1.0, "tau_h": 4.0, "tau_lambda": 1.0},
                "data": {"source": "synthetic", "batch_size": 2},
                "brian2": {"target": "numpy"}, "sweep": {"seed": [0, 1]}}


def _check_brian2_cells(ds):
    assert list(ds.status.values) == ["ok", "ok"], ds.error.values
    for seed in (0, 1):
        direct = {k: v for k, v in BRIAN2_SWEEP.items() if k != "sweep"}
        direct = ctpc.simulate({**direct, "seed": seed})       # main thread, same numpy code
        assert direct.attrs["backend"] == "brian2"
        cell = select_cell(ds, {"seed": seed})
        np.testing.assert_array_equal(cell.credit_norm.values, direct.credit_norm.values)
        np.testing.assert_array_equal(cell.bp_cos.values, direct.bp_cos.values)


def test_brian2_sweep_on_an_in_process_threaded_client(tmp_path):
    """Two worker threads in this process: Brian2 is imported in a task thread, and its cells
    (global Brian2 state) run one at a time."""
    from distributed import Client

    with Client(processes=False, n_workers=2, threads_per_worker=1,
                dashboard_address=None) as client:
        ds = run_sweep(BRIAN2_SWEEP, out=tmp_path / "b2t.nc", client=client, progress=False)
    _check_brian2_cells(ds)


def test_brian2_sweep_on_the_default_local_cluster(tmp_path):
    """Worker processes (the default for python -m ctpc.sweep): Brian2 imported in the task
    thread of a worker process."""
    ds = run_sweep(BRIAN2_SWEEP, out=tmp_path / "b2p.nc", n_workers=1, progress=False)
    _check_brian2_cells(ds)


def test_brian2_import_from_a_thread_skips_only_the_signal_handler():
    """In a fresh interpreter (Brian2 not yet imported): the import from a thread succeeds,
    installs no SIGINT handler, and leaves signal.signal itself unchanged."""
    code = (
        "import signal, sys, threading\n"
        "from ctpc.sweep.cluster import import_brian2_in_worker\n"
        "real, before = signal.signal, signal.getsignal(signal.SIGINT)\n"
        "errors = []\n"
        "def work():\n"
        "    try:\n"
        "        import_brian2_in_worker()\n"
        "    except BaseException as exc:\n"
        "        errors.append(exc)\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "assert not errors, errors\n"
        "assert 'brian2' in sys.modules\n"
        "assert signal.getsignal(signal.SIGINT) is before\n"
        "assert signal.signal is real\n")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_sigterm_stops_a_sweep_cleanly(tmp_path):
    """SIGTERM to `python -m ctpc.sweep` (as a batch scheduler sends it) after the first cell
    file appears: one line, exit 143, the finished cells kept, no combined or temporary file,
    and the local cluster's worker processes shut down with it."""
    proc, cfg, out, cells = start_slow_sweep(tmp_path, "term")
    proc.send_signal(signal.SIGTERM)                  # the client process only
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("ctpc.sweep: terminated"), err
    _wait_group_gone(proc.pid, timeout=30)            # the workers went with it
    assert any(cells.glob("*.nc")) and not out.exists()
    assert not list(tmp_path.rglob("*.tmp-*"))
    for path in cells.glob("*.nc"):
        with ctpc.open_results(path) as cell:
            assert cell.attrs["status"] == "ok"
