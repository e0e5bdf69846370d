"""Sweep usability: a swept key given twice in any spelling, cells that only a worker used to
refuse, a --scheduler address where something other than Dask listens, an interrupted sweep's
output, and the summary of a rerun (docs/reliability_new/sweep.md).

Refusals go through ``python -m ctpc.sweep``'s main in this process with a dask_client that
fails the test if called: a refused sweep must start no cluster. Sweeps that run use an
in-process scheduler; only the interrupt tests start a real local cluster in a child process.
"""
import contextlib
import http.server
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from ctpc.config.schema import ConfigError
from ctpc.sweep import plan_sweep
from ctpc.cli.sweep import main as sweep_main
from ctpc.sweep.cluster import HANDSHAKE_TIMEOUT_S, PROBE_TIMEOUT_S, dask_client

ROOT = Path(__file__).resolve().parent.parent

BASE = {"name": "rs", "dtype": "float64", "device": "cpu",
        "network": {"width": 4, "depth": 3, "input_dim": 5, "output_dim": 3},
        "data": {"source": "synthetic", "batch_size": 2},
        "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 3},
        "record": {"samples": [0]}}
# A training config on the bundled digits (1437 training examples), two updates.
TRAIN = {"name": "rs_train", "dtype": "float64", "device": "cpu",
         "network": {"width": 4, "depth": 3},
         "data": {"source": "digits", "batch_size": 4},
         "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 3},
         "training": {"epochs": 1, "max_updates": 2, "checkpoint_every": None}}


def write(tmp_path: Path, base: dict, sweep: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**base, "sweep": sweep}, sort_keys=False))
    return path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = sweep_main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


# ============================================================ 1. a swept key given twice
TWICE = [
    ("dotted and nested", {"integrator.dt": [0.5, 1.0], "integrator": {"dt": [0.25]}},
     ["integrator.dt is given twice", "'integrator.dt: [0.5, 1.0]'",
      "'integrator: {dt: [0.25]}'"]),
    ("nested and dotted", {"integrator": {"dt": [0.25]}, "integrator.dt": [0.5, 1.0]},
     ["integrator.dt is given twice", "'integrator: {dt: [0.25]}'",
      "'integrator.dt: [0.5, 1.0]'"]),
    ("dotted and linked", {"integrator.dt": [0.5, 1.0],
                           "seed, integrator.dt": [[0, 0.25], [1, 0.5]]},
     ["integrator.dt is given twice", "'integrator.dt: [0.5, 1.0]'",
      "'seed, integrator.dt: [[0, 0.25], [1, 0.5]]'"]),
    ("nested linked and dotted", {"network": {"depth, integrator.steps": [[3, 4]]},
                                  "integrator.steps": [5, 6]},
     ["integrator.steps is given twice", "'network: {depth, integrator.steps: [[3, 4]]}'",
      "'integrator.steps: [5, 6]'"]),
    ("spaces around a dotted key", {"seed": [0, 1], " seed ": [2]},
     ["seed is given twice", "'seed: [0, 1]'", "' seed : [2]'"]),
    ("twice in one linked group", {"seed, seed": [[0, 0], [1, 1]]},
     ["sweep.seed, seed", "listed twice"]),
    ("a section and a key inside it", {"integrator": [1, 2], "integrator.dt": [0.5]},
     ["integrator and integrator.dt overlap", "'integrator: [1, 2]'",
      "'integrator.dt: [0.5]'"]),
]


@pytest.mark.parametrize("spec, needles", [t[1:] for t in TWICE], ids=[t[0] for t in TWICE])
def test_a_key_given_twice_is_refused_naming_both_spellings(spec, needles, tmp_path, no_cluster,
                                                            capsys):
    cfg = write(tmp_path, BASE, spec)
    for extra in ([], ["--dry-run"]):
        code, _, err = run_cli([cfg, "--out", tmp_path / "o.nc", "--quiet", *extra], capsys)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        for needle in needles:
            assert needle in err, f"{needle!r} not in {err}"


def test_set_replaces_a_swept_key_however_the_file_writes_it(tmp_path, no_cluster, capsys):
    """``--set sweep.KEY=...`` arrives nested; beside the file's dotted KEY it replaces it
    (it is not a second spelling of KEY). Guards the fix above: without dropping the file's
    entry, this would be refused as "given twice"."""
    cfg = write(tmp_path, BASE, {"integrator.dt": [0.5, 1.0],
                                 "network.depth, integrator.steps": [[3, 4], [4, 5]]})
    code, out, err = run_cli([cfg, "--out", tmp_path / "o.nc", "--dry-run",
                              "--set", "sweep.integrator.dt=[0.25, 2.0, 3.0]",
                              "--set", "sweep.network.depth,integrator.steps=[[5, 6]]"], capsys)
    assert code == 0, err
    assert "3 cells, 0 done" in out, out
    assert "integrator.dt=0.25" in out and "integrator.dt=0.5" not in out, out
    assert "network.depth=5, integrator.steps=6" in out, out
    plan = plan_sweep(cfg, ["sweep.integrator.dt=[0.25]"], out=tmp_path / "o.nc")
    assert [a.dim for a in plan.axes] == ["integrator.dt", "network.depth"]   # in place


# ======================================================== 2. every cell checked up front
HAS_CUDA = torch.cuda.is_available()
CELLS = [
    ("bp in a simulation", BASE, {"dynamics.method": ["pcalm", "bp"]},
     ["dynamics.method='bp'", "dynamics.method 'bp' has no neuron dynamics"]),
    ("brian2 in training", TRAIN, {"backend": ["torch", "brian2"]},
     ["backend='brian2'", "backend 'brian2' cannot train"]),
    ("probe larger than the data", TRAIN, {"training.probe_size": [4, 5000]},
     ["training.probe_size=5000", "training.probe_size (5000) exceeds the 1437"]),
    ("synthetic data in training", {**TRAIN, "network": {**TRAIN["network"], "input_dim": 64,
                                                         "output_dim": 10}},
     {"data.source": ["digits", "synthetic"]},
     ["data.source='synthetic'", "no train/test split"]),
    # (data.split: test: the batch check of loading is on the test split, which is larger)
    ("train subset smaller than a batch", {**TRAIN, "data": {**TRAIN["data"], "split": "test"}},
     {"data.train_subset": [100, 3]},
     ["data.train_subset=3", "data.batch_size (4) is larger than the 3 training examples"]),
    pytest.param("cuda graphs on a CPU", TRAIN, {"training.cuda_graph": [False, True]},
                 ["training.cuda_graph=True", "training.cuda_graph: true needs a CUDA device"],
                 marks=pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")),
    pytest.param("brian2 cpp_standalone state monitors",
                 {**BASE, "backend": "brian2", "network": {**BASE["network"], "width": 64},
                  "integrator": {"scheme": "euler", "dt": 1.0, "steps": 2000},
                  "record": {"samples": [0], "units": [0], "layers": [1], "variables": ["h"],
                             "max_mb": 1}, "brian2": {"target": "cpp_standalone"}},
                 {"seed": [0, 1]},
                 ["sweep cell (seed=0)", "brian2.target cpp_standalone keeps the full state"],
                 marks=pytest.mark.skipif(importlib.util.find_spec("brian2") is None,
                                          reason="brian2 is not installed")),
    pytest.param("device cuda without a GPU", BASE, {"device": ["cpu", "cuda"]},
                 ["device='cuda'", "sees no CUDA GPU"],
                 marks=pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")),
]


def _case_id(case):
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("name, base, spec, needles", CELLS, ids=[_case_id(c) for c in CELLS])
def test_every_cell_is_checked_before_any_cell_runs(name, base, spec, needles, tmp_path,
                                                    no_cluster, capsys):
    """What a cell's task refused only inside a worker (the others ran first, and it came out
    "crashed", exit 1) is exit 2 at planning, naming the cell's overrides and the key."""
    cfg = write(tmp_path, base, spec)
    for extra in ([], ["--dry-run"]):
        code, _, err = run_cli([cfg, "--out", tmp_path / "o.nc", "--quiet", *extra], capsys)
        assert code == 2, err
        assert err.startswith("ctpc.sweep: sweep cell ("), err
        for needle in needles:
            assert needle in err, f"{needle!r} not in {err}"
    assert not (tmp_path / "o.cells").exists() and not (tmp_path / "o.nc").exists()


def test_a_missing_compiler_is_found_at_planning(tmp_path, no_cluster, capsys):
    """integrator.compile on the CPU needs a C++ compiler (checked when training sets up its
    rule, in the worker): now at planning, for the compiled cells only."""
    from torch._inductor import config as inductor_config
    cfg = write(tmp_path, TRAIN, {"integrator.compile": [False, "loop"]})
    # inductor's own patch: monkeypatch.setattr on its config proxy undoes itself with a
    # delattr, which removes cpp.cxx for every later test of the process (then every compile
    # fails with "cpp.cxx does not exist")
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/ctpc-test-g++",)}):
        code, _, err = run_cli([cfg, "--out", tmp_path / "o.nc", "--quiet"], capsys)
    assert code == 2, err
    assert "sweep cell (integrator.compile='loop')" in err and "no C++ compiler" in err, err


@pytest.fixture(scope="module")
def inproc():
    from distributed import Client
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        yield client.scheduler.address


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_a_given_cluster_checks_the_cells_on_its_worker(tmp_path, inproc, capsys):
    """A cluster given by address has machines of its own (a GPU planning lacks, say): the
    machine's checks run on one of its workers before any cell, not at planning."""
    cfg = write(tmp_path, BASE, {"device": ["cpu", "cuda"]})
    code, _, err = run_cli([cfg, "--out", tmp_path / "o.nc", "--scheduler", inproc, "--quiet",
                            "--dry-run"], capsys)
    assert code == 0, err                    # planning does not judge the cluster's machines
    code, _, err = run_cli([cfg, "--out", tmp_path / "o.nc", "--scheduler", inproc, "--quiet"],
                           capsys)
    assert code == 2, err
    assert "sweep cell (device='cuda')" in err and "sees no CUDA GPU" in err, err
    assert f"checked on a worker of --scheduler {inproc}, before any cell ran" in err, err
    assert not (tmp_path / "o.cells").exists()


# ======================================================== 3. a listener that is not Dask
@contextlib.contextmanager
def listener(mode: str):
    """A TCP server on 127.0.0.1 in a thread: 'silent' accepts and never answers, 'garbage'
    answers bytes that are not Dask's protocol, 'http' is http.server."""
    if mode == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 http.server.SimpleHTTPRequestHandler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()
        return
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    held, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)
            if mode == "garbage":
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" * 8)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        srv.close()


def _connect_in_thread(address: str, limit_s: float):
    """dask_client(scheduler=address) on a daemon thread: (exception, seconds), or a test
    failure if it has not returned after limit_s (it hung for minutes before the fix)."""
    result = {}

    def connect():
        t0 = time.monotonic()
        try:
            with dask_client(scheduler=address, n_workers=1):
                result["exc"] = None
        except BaseException as exc:  # noqa: BLE001
            result["exc"] = exc
        result["s"] = time.monotonic() - t0
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        pytest.fail(f"connecting to {address} still runs after {limit_s:g} s")
    return result["exc"], result["s"]


@pytest.mark.parametrize("mode", ["silent", "garbage", "http"])
def test_a_listener_that_is_not_a_scheduler_fails_within_seconds(mode):
    with listener(mode) as port:
        address = f"tcp://127.0.0.1:{port}"
        exc, seconds = _connect_in_thread(address, 4 * (PROBE_TIMEOUT_S + HANDSHAKE_TIMEOUT_S))
    assert isinstance(exc, ConfigError), repr(exc)
    assert str(exc).startswith(f"--scheduler {address}: something listens on 127.0.0.1:{port} "
                               "but it is not a Dask scheduler"), exc
    assert seconds < HANDSHAKE_TIMEOUT_S + 5, seconds       # at most the handshake's bound


def test_scheduler_address_of_a_web_server_is_exit_2_on_the_command_line(tmp_path):
    """The issue's case: `python -m ctpc.sweep CONFIG --scheduler 127.0.0.1:PORT` at
    http.server ran past 300 s; now one line and exit 2."""
    cfg = write(tmp_path, BASE, {"seed": [0, 1]})
    with listener("http") as port:
        proc = subprocess.run([sys.executable, "-m", "ctpc.sweep", str(cfg), "--out",
                               str(tmp_path / "o.nc"), "--scheduler", f"127.0.0.1:{port}",
                               "--quiet"], env=child_env(), capture_output=True, text=True,
                              timeout=180)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"--scheduler 127.0.0.1:{port}: something listens" in lines[0], proc.stderr
    assert not (tmp_path / "o.cells").exists()


def test_a_worker_address_is_not_taken_for_the_scheduler(inproc):
    """The identity call also tells a worker's (or nanny's) address from the scheduler's."""
    from distributed import LocalCluster
    with LocalCluster(n_workers=1, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster:
        worker = next(iter(cluster.scheduler_info["workers"]))
        exc, _ = _connect_in_thread(worker, 60)
        assert isinstance(exc, ConfigError) and "it is a Dask Worker, not the scheduler" in \
            str(exc), repr(exc)
        exc, _ = _connect_in_thread(cluster.scheduler_address, 60)     # the real one connects
        assert exc is None, repr(exc)


# ============================================================ 4. interrupting a sweep
def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@contextlib.contextmanager
def dashboard_port_taken():
    """Hold distributed's default HTTP port 8787 (unless something else already does): every
    cluster start then warned "Port 8787 is already in use", as on a machine where another
    cluster runs."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 8787))
        sock.listen(1)
    except OSError:
        pass                                  # taken already: the same situation
    try:
        yield
    finally:
        sock.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_sweep_prints_one_line(signum, tmp_path):
    """Ctrl-C in a terminal signals the whole process group (client and local workers), and so
    does a batch system's SIGTERM: stderr is exactly one non-empty line (no worker traceback,
    no distributed warning, no leaked-semaphore line), and the workers are gone."""
    raw = {**BASE, "sweep": {"seed": [0, 1, 2], "integrator.steps": [10, 20000]},
           "record": {"every": 1000, "samples": [0]}}
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "slow.nc"
    cells = out.with_suffix(".cells")
    with dashboard_port_taken():
        proc = subprocess.Popen([sys.executable, "-m", "ctpc.sweep", str(cfg), "--out", str(out),
                                 "--workers", "1", "--quiet"], env=child_env(),
                                start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not (cells.exists() and any(cells.glob("*.nc"))):   # cells are running
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no cell file appeared: {proc.communicate()[1]}")
                time.sleep(0.02)
            os.killpg(proc.pid, signum)               # as the terminal / batch system does
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert proc.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if line.strip()]
    word = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert len(lines) == 1 and lines[0].startswith(f"ctpc.sweep: {word}"), err
    end = time.monotonic() + 30
    while True:                                       # the workers went with it
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > end:
            pytest.fail("worker processes of the interrupted sweep are still alive")
        time.sleep(0.05)


# ============================================================ 5. what a rerun reused
def test_summary_counts_reused_and_run_cells(tmp_path, inproc, capsys):
    """The summary of a (re)run counts the cells it reused and those it ran, by outcome."""
    out = tmp_path / "o.nc"
    # tau_h = 30, tau_lambda = 1, dt = 3: explicit Euler diverges, semi_implicit does not
    base = {**BASE, "network": {**BASE["network"], "depth": 5},
            "dynamics": {"rho": 1.0, "tau_h": 30.0, "tau_lambda": 1.0},
            "integrator": {"scheme": "semi_implicit", "dt": 3.0, "steps": 150}}
    first = write(tmp_path, base, {"integrator.scheme": ["semi_implicit", "euler"]}, "a.yaml")
    code, stdout, err = run_cli([first, "--out", out, "--scheduler", inproc], capsys)
    assert code == 0, err
    assert ("cells: 2 (reused 0, ran 2: ok 1, diverged 1, crashed 0); per-cell files in "
            f"{out.with_suffix('.cells')}") in stdout, stdout
    more = write(tmp_path, base, {"integrator.scheme": ["semi_implicit", "euler", "heun"]},
                 "b.yaml")
    code, stdout, err = run_cli([more, "--out", out, "--scheduler", inproc], capsys)
    assert code == 0, err
    summary = [line for line in stdout.splitlines() if line.startswith("cells:")]
    assert summary == [
        "cells: 3 (reused 2, ran 1: ok 1, diverged 0, crashed 0; in all ok 2, diverged 1, "
        f"crashed 0); per-cell files in {out.with_suffix('.cells')}"], stdout
