"""Output paths (docs/reliability_new/outputs.md): an output never overwrites an input; companion
files are named after their output's full name and belong to its run; nothing is left behind
(``~``, temporaries of killed writes); bad output names are refused before any work.

Every refusal is exit 2 with one line naming the key, flag or file; no cluster starts, no file
is written and nothing in the directory changes.
"""
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import ctpc
import ctpc.sweep as sweep_mod
from ctpc.config.paths import OutputError
from ctpc.cli.simulate import main as simulate_main
from ctpc.sweep import plan_sweep, run_sweep
from ctpc.cli.sweep import main as sweep_main
from ctpc.cli.train import main as train_main

from clicases import check as _check, cli  # noqa: F401
from datafiles import write_mnist_dir

BASE = {"name": "tiny", "dtype": "float64", "device": "cpu",
        "network": {"width": 4, "depth": 3, "input_dim": 5, "output_dim": 3},
        "data": {"source": "synthetic", "batch_size": 2},
        "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 3}}
# a training run of a few milliseconds per update (digits, N = 4, L = 3, T = 4)
TRAIN = {"name": "tr", "dtype": "float64", "device": "cpu", "seed": 0,
         "network": {"width": 4, "depth": 3},
         "data": {"source": "digits", "batch_size": 8, "train_subset": 32, "test_subset": 16},
         "integrator": {"scheme": "discrete", "budget": 4},
         "training": {"max_updates": 2, "eval_every": None}}


def check(code, err, want_code, needles):
    _check(code, err, want_code, needles, max_lines=3)      # a message, not a dump


def tree(root: Path) -> dict:
    """Everything under ``root``: relative path -> (type, bytes of a regular file)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), data)
    return out


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def no_cluster(monkeypatch):
    def refuse(**_):
        raise AssertionError("no cluster may start for a refused sweep")
    monkeypatch.setattr(sweep_mod, "dask_client", refuse)


@pytest.fixture
def inputs(tmp_path):
    """A simulate config reading an .npz data file and a weights file (absolute paths)."""
    rng = np.random.default_rng(0)
    data, weights = tmp_path / "d.npz", tmp_path / "w.npz"
    np.savez(data, x=rng.normal(size=(10, 5)), y=np.eye(3)[rng.integers(0, 3, 10)])
    np.savez(weights, w1=rng.normal(size=(4, 5)), w2=rng.normal(size=(4, 4)),
             w3=rng.normal(size=(3, 4)))
    cfg = {**BASE, "data": {"source": "npz", "path": str(data), "batch_size": 2},
           "network": {**BASE["network"], "weights": str(weights)}}
    return {"config file": write_yaml(tmp_path / "c.yaml", cfg), "data.path": data,
            "network.weights": weights}


def train_inputs(tmp_path, data_name="d.npz", weights_name=None) -> dict:
    """A training config on an .npz with both splits (D = 5, 3 classes), and optionally
    initial weights."""
    rng = np.random.default_rng(1)
    data = tmp_path / data_name
    with open(data, "wb") as f:
        np.savez(f, x_train=rng.normal(size=(32, 5)), y_train=rng.integers(0, 3, 32),
                 x_test=rng.normal(size=(16, 5)), y_test=rng.integers(0, 3, 16))
    cfg = {**TRAIN, "data": {"source": "npz", "path": str(data), "batch_size": 8}}
    found = {"data.path": data}
    if weights_name is not None:
        weights = tmp_path / weights_name
        with open(weights, "wb") as f:
            np.savez(f, w1=rng.normal(size=(4, 5)), w2=rng.normal(size=(4, 4)),
                     w3=rng.normal(size=(3, 4)))
        cfg["network"] = {**TRAIN["network"], "weights": str(weights)}
        found["network.weights"] = weights
    found["config file"] = write_yaml(tmp_path / "t.yaml", cfg)
    return found


# =============================================================== 1. outputs never overwrite inputs
def _aliases(tmp_path: Path, target: Path) -> dict:
    """Ways of naming the file ``target`` as an output path."""
    link, hard = tmp_path / "link.nc", tmp_path / "hard.nc"
    link.symlink_to(target)
    os.link(target, hard)
    return {"the same path": target, "a symbolic link": link, "a hard link": hard,
            "through a missing directory and ..": tmp_path / "nothere" / ".." / target.name,
            "relative": Path(os.path.relpath(target))}


@pytest.mark.parametrize("key", ["data.path", "network.weights", "config file"])
@pytest.mark.parametrize("how", ["the same path", "a symbolic link", "a hard link",
                                 "through a missing directory and ..", "relative"])
def test_simulate_never_overwrites_an_input(key, how, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _aliases(tmp_path, inputs[key])[how]
    before = tree(tmp_path)
    code, err = cli(simulate_main, [inputs["config file"], "--out", out, "--quiet"], capsys)
    check(code, err, 2, [key, "would overwrite its own input"])
    assert tree(tmp_path) == before          # the input intact, no 'nothere/' made


def test_simulate_api_never_overwrites_an_input(inputs):
    for key in ("data.path", "network.weights", "config file"):
        with pytest.raises(OutputError, match="would overwrite its own input"):
            ctpc.simulate(str(inputs["config file"]), out=inputs[key])


@pytest.mark.parametrize("case", ["--out is the data file", "--out is the config file",
                                  "fine-tuning into the same --out",
                                  "the checkpoint is the data file"])
def test_train_never_overwrites_an_input(case, tmp_path, capsys):
    if case == "--out is the data file":
        files = train_inputs(tmp_path, data_name="d.nc")
        out, needles = files["data.path"], ["--out", "is data.path"]
    elif case == "--out is the config file":
        files = train_inputs(tmp_path)
        out, needles = files["config file"], ["--out", "is the config file"]
    elif case == "fine-tuning into the same --out":       # network.weights = <out>.weights.npz
        files = train_inputs(tmp_path, weights_name="o.weights.npz")
        out, needles = tmp_path / "o.nc", ["its weights file", "is network.weights"]
    else:
        files = train_inputs(tmp_path, data_name="o.ckpt.pt")
        out, needles = tmp_path / "o.nc", ["its checkpoint", "is data.path"]
    before = tree(tmp_path)
    code, err = cli(train_main, [files["config file"], "--out", out, "--quiet"], capsys)
    check(code, err, 2, [*needles, "would overwrite its own input"])
    assert tree(tmp_path) == before


def test_train_api_never_overwrites_an_input(tmp_path):
    files = train_inputs(tmp_path, weights_name="o.weights.npz")
    before = tree(tmp_path)
    with pytest.raises(OutputError, match="its weights file .* is network.weights"):
        ctpc.train(str(files["config file"]), out=tmp_path / "o.nc")
    assert tree(tmp_path) == before


def _sweep_config(tmp_path: Path, **changes) -> Path:
    return write_yaml(tmp_path / "s.yaml", {**BASE, "sweep": {"seed": [0, 1]}, **changes})


@pytest.mark.parametrize("case", ["--out is the config file", "--out is the data file",
                                  "the cells directory is the IDX directory",
                                  "a cell file is a hard link to the weights",
                                  "--out is a link to the data file"])
def test_sweep_never_overwrites_an_input(case, tmp_path, no_cluster, capsys):
    rng = np.random.default_rng(0)
    weights = tmp_path / "w.npz"
    np.savez(weights, w1=rng.normal(size=(4, 5)), w2=rng.normal(size=(4, 4)),
             w3=rng.normal(size=(3, 4)))
    data = tmp_path / "d.nc"
    with open(data, "wb") as f:
        np.savez(f, x=rng.normal(size=(10, 5)), y=np.eye(3)[rng.integers(0, 3, 10)])
    out, sets = tmp_path / "s.nc", []
    if case == "--out is the config file":
        config = _sweep_config(tmp_path)
        out, needles = config, ["is the config file"]
    elif case == "--out is the data file":
        config = _sweep_config(tmp_path, data={"source": "npz", "path": str(data),
                                               "batch_size": 2})
        out, needles = data, ["is data.path"]
    elif case == "--out is a link to the data file":
        config = _sweep_config(tmp_path, data={"source": "npz", "path": str(data),
                                               "batch_size": 2})
        (tmp_path / "link.nc").symlink_to(data)
        out, needles = tmp_path / "link.nc", ["is data.path", "through a link"]
    elif case == "the cells directory is the IDX directory":
        write_mnist_dir(tmp_path / "s.cells")
        config = _sweep_config(tmp_path, data={"source": "idx", "path": str(tmp_path / "s.cells"),
                                               "batch_size": 2},
                               network={"width": 4, "depth": 3})
        needles = ["its cells directory", "is data.path"]
    else:
        config = _sweep_config(tmp_path, network={**BASE["network"], "weights": str(weights)})
        key = plan_sweep(str(config), out=out).cells[0].key
        (tmp_path / "s.cells").mkdir()
        os.link(weights, tmp_path / "s.cells" / f"{key}.nc")
        needles = ["the cell file", "is network.weights"]
    before = tree(tmp_path)
    code, err = cli(sweep_main, [config, "--out", out, "--quiet", *sets], capsys)
    check(code, err, 2, [*needles, "would overwrite its own input"])
    assert tree(tmp_path) == before
    with pytest.raises(OutputError, match="would overwrite its own input"):
        run_sweep(str(config), out=out, progress=False)
    assert tree(tmp_path) == before


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _null_device(tmp_path: Path) -> Path:
    """/dev/null where this process cannot replace it (not root); as root, a character device
    of our own (the same major/minor as /dev/null), so a regression replaces only that one."""
    if not os.access("/dev", os.W_OK):
        return Path("/dev/null")
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    except (PermissionError, OSError):
        pytest.skip("/dev is writable here but no device node can be made to stand in for it")
    return node


@pytest.mark.parametrize("case", ["simulate --out /dev/null", "simulate --out FIFO",
                                  "train --out FIFO", "train: the weights file is a FIFO",
                                  "train: the checkpoint is a directory",
                                  "sweep --out /dev/null", "sweep: a cell file is a FIFO"])
def test_non_regular_outputs_are_refused(case, tmp_path, no_cluster, capsys):
    if case.startswith("simulate"):
        main, config = simulate_main, write_yaml(tmp_path / "c.yaml", BASE)
        out = _null_device(tmp_path) if "/dev/null" in case else _fifo(tmp_path / "f.nc")
        needles = ["character device" if "/dev/null" in case else "FIFO", "not a regular file"]
    elif case.startswith("train"):
        main, config = train_main, train_inputs(tmp_path)["config file"]
        out = tmp_path / "o.nc"
        if case == "train --out FIFO":
            _fifo(out)
            needles = ["FIFO", "not a regular file"]
        elif "weights" in case:
            _fifo(tmp_path / "o.weights.npz")
            needles = ["its weights file", "FIFO"]
        else:
            (tmp_path / "o.ckpt.pt").mkdir()
            needles = ["its checkpoint", "is a directory"]
    else:
        main, config = sweep_main, _sweep_config(tmp_path)
        out = tmp_path / "s.nc"
        if "/dev/null" in case:
            out, needles = _null_device(tmp_path), ["character device"]
        else:
            key = plan_sweep(str(config), out=out).cells[1].key
            (tmp_path / "s.cells").mkdir()
            _fifo(tmp_path / "s.cells" / f"{key}.nc")
            needles = ["the cell file", "FIFO"]
    before = tree(tmp_path)
    code, err = cli(main, [config, "--out", out, "--quiet"], capsys)
    check(code, err, 2, needles)
    assert tree(tmp_path) == before          # the FIFO, device node, directory still there
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# ============================================ 2. companions are named after the output, one run's
def test_companions_need_an_output_ending_in_nc(tmp_path, no_cluster, monkeypatch, capsys):
    """``--out a`` and ``--out a.nc`` would share a.weights.npz, a.ckpt.pt, a.cells/: a command
    that writes companions needs a .nc name. simulate writes none and takes any name."""
    monkeypatch.chdir(tmp_path)
    files = train_inputs(tmp_path)
    before = tree(tmp_path)
    code, err = cli(train_main, [files["config file"], "--out", "a", "--quiet"], capsys)
    check(code, err, 2, ["--out 'a'", "must end in .nc", "NAME.weights.npz", "'a.nc'"])
    code, err = cli(sweep_main, [_sweep_config(tmp_path), "--out", "b.h5", "--quiet"], capsys)
    check(code, err, 2, ["--out 'b.h5'", "must end in .nc", "NAME.cells/", "'b.nc'"])
    with pytest.raises(OutputError, match="must end in .nc"):
        ctpc.train(str(files["config file"]), out="a")
    assert tree(tmp_path).keys() == before.keys() | {"s.yaml"}
    code, err = cli(simulate_main, [write_yaml(tmp_path / "c.yaml", BASE), "--out", "a",
                                    "--quiet"], capsys)
    assert code == 0 and (tmp_path / "a").is_file(), err


def test_one_helper_names_every_companion(tmp_path):
    from ctpc.config.paths import COMPANIONS, companion_path
    from ctpc.sweep import cells_dir_of
    from ctpc.training import checkpoint as ckpt
    out = tmp_path / "run.v2.nc"
    assert companion_path(out, "weights") == tmp_path / "run.v2.weights.npz"
    assert companion_path(out, "checkpoint") == tmp_path / "run.v2.ckpt.pt"
    assert companion_path(out, "cells") == tmp_path / "run.v2.cells"
    assert ckpt.weights_path(out) == companion_path(out, "weights")
    assert ckpt.checkpoint_path(out) == companion_path(out, "checkpoint")
    assert cells_dir_of(out) == companion_path(out, "cells")
    assert set(COMPANIONS) == {"weights", "checkpoint", "cells"}
    for name in ("run", "run.h5", "run.nc.bak"):
        with pytest.raises(OutputError, match="ends in .nc"):
            companion_path(tmp_path / name, "weights")


def test_a_cell_without_weights_keeps_no_stale_weights_file(tmp_path, live_pid):
    """Every file beside a cell's file is that cell's: a simulation cell (no weights) removes a
    weights file left under its name; killed writes of cell files and weights are cleaned."""
    from distributed import Client
    raw = {**BASE, "sweep": {"seed": [0]}}
    out = tmp_path / "s.nc"
    key = plan_sweep(raw, out=out).cells[0].key
    cells = tmp_path / "s.cells"
    cells.mkdir()
    dead = dead_pid()
    stale = [cells / f"{key}.weights.npz", cells / f"{key}.weights.npz.tmp-{dead}",
             cells / f"{key}.weights.npz.tmp-{dead}.npz", cells / f"{key}.nc.tmp-{dead}",
             cells / f"other.weights.npz.tmp-{dead}"]
    live = cells / f"{key}.weights.npz.tmp-{live_pid}"
    for p in [*stale, live]:
        p.write_bytes(b"left by another run")
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        ds = run_sweep(raw, out=out, client=client, progress=False)
    assert ds.attrs["n_ok"] == 1
    assert not [p.name for p in stale if p.exists()]
    assert live.exists() and (cells / f"{key}.nc").is_file()


# ============================================================== 3. nothing left behind
def test_tilde_is_expanded_everywhere(tmp_path, monkeypatch, capsys):
    """``~`` in the config file argument, output:, --out, out=, data.path and network.weights
    means HOME, as in the shell: no ``./~`` folder, no temporary left in HOME."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    rng = np.random.default_rng(0)
    np.savez(home / "d.npz", x=rng.normal(size=(10, 5)), y=np.eye(3)[rng.integers(0, 3, 10)])
    np.savez(home / "w.npz", w1=rng.normal(size=(4, 5)), w2=rng.normal(size=(4, 4)),
             w3=rng.normal(size=(3, 4)))
    write_yaml(home / "c.yaml", {**BASE, "output": "~/x.nc",
                                 "data": {"source": "npz", "path": "~/d.npz", "batch_size": 2},
                                 "network": {**BASE["network"], "weights": "~/w.npz"}})
    code, err = cli(simulate_main, ["~/c.yaml", "--quiet"], capsys)
    assert code == 0, err
    code, err = cli(simulate_main, ["~/c.yaml", "--out", "~/y.nc", "--quiet"], capsys)
    assert code == 0, err
    ds = ctpc.simulate(str(home / "c.yaml"), out="~/z.nc")
    assert ds.attrs["path"] == str(home / "z.nc")
    assert sorted(p.name for p in home.iterdir()) == ["c.yaml", "d.npz", "w.npz", "x.nc",
                                                      "y.nc", "z.nc"]
    assert list(work.iterdir()) == []
    assert ctpc.load_config(str(home / "c.yaml")).data.path == home / "d.npz"


@pytest.mark.parametrize("argv, needles", [
    (["--out", "~no_such_user_ctpc/x.nc"], ["--out", "cannot expand", "~no_such_user_ctpc"]),
    (["--set", "output=~no_such_user_ctpc/x.nc"], ["output", "cannot expand"]),
])
def test_tilde_that_cannot_be_expanded_is_refused(argv, needles, tmp_path, monkeypatch,
                                                  capsys):
    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path / "c.yaml", BASE)
    before = tree(tmp_path)
    check(*cli(simulate_main, ["c.yaml", *argv, "--quiet"], capsys), 2, needles)
    assert tree(tmp_path) == before          # no folder named ~no_such_user_ctpc


def test_training_removes_stale_temporaries_of_its_companions(tmp_path, live_pid, capsys):
    """A SIGKILL'd training leaves NAME.tmp-PID of its checkpoint, weights file (older ctpc:
    NAME.tmp-PID.npz) or output; the next run of the same output removes those whose process
    is gone, keeps a live one's, and its own weights file is written under NAME.tmp-PID."""
    files = train_inputs(tmp_path)
    dead = dead_pid()
    stale = [tmp_path / f"o.nc.tmp-{dead}", tmp_path / f"o.ckpt.pt.tmp-{dead}",
             tmp_path / f"o.weights.npz.tmp-{dead}", tmp_path / f"o.weights.npz.tmp-{dead}.npz"]
    live = tmp_path / f"o.ckpt.pt.tmp-{live_pid}"
    for p in [*stale, live]:
        p.write_bytes(b"half a file")
    code, err = cli(train_main, [files["config file"], "--out", tmp_path / "o.nc", "--quiet"],
                    capsys)
    assert code == 0, err
    assert not [p.name for p in stale if p.exists()]
    assert live.exists()
    assert sorted(np.load(tmp_path / "o.weights.npz").files) == ["w1", "w2", "w3"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["d.npz", "t.yaml", "o.nc", "o.ckpt.pt", "o.weights.npz",
                           live.name]), left


def test_check_outputs_cleans_every_companion_but_never_an_input(tmp_path):
    """The one check removes dead writers' temporaries of the output and of each companion,
    but never a file that is an input, whatever its name."""
    from ctpc.config.paths import TRAINING_COMPANIONS, check_outputs
    dead = dead_pid()
    stale = [tmp_path / f"o.nc.tmp-{dead}", tmp_path / f"o.nc.tmp-stream-{dead}",
             tmp_path / f"o.ckpt.pt.tmp-{dead}", tmp_path / f"o.weights.npz.tmp-{dead}.npz"]
    for p in stale[:1] + stale[2:]:
        p.write_bytes(b"half")
    stale[1].mkdir()
    precious = tmp_path / f"o.weights.npz.tmp-{dead}"       # named like a temporary, an input
    precious.write_bytes(b"the user's data")
    other = tmp_path / f"o.nc.tmp-{dead}.bak"                  # not a temporary of ctpc
    other.write_bytes(b"keep")
    check_outputs(tmp_path / "o.nc", companions=TRAINING_COMPANIONS,
                  inputs=[("data.path", precious)])
    assert not [p.name for p in stale if p.exists()]
    assert precious.read_bytes() == b"the user's data" and other.exists()


def test_fetch_removes_stale_part_files(tmp_path, live_pid):
    """A killed download leaves .NAME.tmp-PID.XXXXXXXX.part; the next fetch removes those of
    dead processes, and legacy (PID-less) ones no download can still be writing."""
    from ctpc.cli import fetch
    name = "train-images-idx3-ubyte.gz"
    dead = tmp_path / f".{name}.tmp-{dead_pid()}.abcd1234.part"
    live = tmp_path / f".{name}.tmp-{live_pid}.abcd1234.part"
    old, fresh = tmp_path / f".{name}.k3j4h5g6.part", tmp_path / f".{name}.q1w2e3r4.part"
    unrelated = tmp_path / ".notes.part"
    for p in (dead, live, old, fresh, unrelated):
        p.write_bytes(b"partial")
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    with pytest.raises(fetch.FetchError):      # the mirror does not exist: nothing downloads
        fetch.fetch("mnist", tmp_path, mirror=(tmp_path / "no-mirror").as_uri(),
                    progress=False, say=lambda _: None)
    assert not dead.exists() and not old.exists()
    assert live.exists() and fresh.exists() and unrelated.exists()
    assert not [p for p in tmp_path.glob(f".{name}*.part") if p not in (live, fresh)]


# ===================================================================== 4. bad output names
NAME_CASES = [
    # (id, config changes, extra argv, needles); the YAML is written as given
    ("NUL in output", 'output: "o\\0b.nc"\n', [], ["output", "NUL byte"]),
    ("NUL in name", 'name: "a\\0b"\n', [], ["name", "NUL byte"]),
    ("lone surrogate in name", 'name: "a\\udcffb"\n', ["--out", "o.nc"], ["name", "UTF-8"]),
    ("lone surrogate in description", 'description: "\\udcff"\n', ["--out", "o.nc"],
     ["description", "UTF-8"]),
    ("non-UTF-8 --out", "", ["--out", "\udcff.nc"], ["--out", "not valid UTF-8"]),
    ("name of 201 bytes", f"name: {'n' * 201}\n", [], ["name", "201 bytes", "at most 200"]),
    ("--out name of 240 bytes", "", ["--out", "a" * 237 + ".nc"],
     ["--out", "240 bytes", "255 bytes", "NAME.nc.tmp-stream-PID"]),
    ("--out directory of 300 bytes", "", ["--out", "b" * 300 + "/x.nc"],
     ["--out", "the directory name", "300 bytes"]),
    ("--out path of 4200 bytes", "", ["--out", "d/" * 2100 + "x.nc"], ["--out", "the path is"]),
    ("--out newdir/", "", ["--out", "newdir/"], ["--out 'newdir/'", "names a directory",
                                                 "'newdir/run.nc'"]),
    ("--out newdir/.", "", ["--out", "newdir/."], ["--out", "names a directory"]),
    ("--out ..", "", ["--out", ".."], ["--out", "names a directory"]),
    ("output: newdir/", "output: newdir/\n", [], ["output", "names a directory"]),
    ("output: empty", "output: ''\n", [], ["output", "empty path"]),
    ("name: ../../x", "name: ../../x\n", [], ["name", "not a plain file name", "'x'"]),
    ("name: a/b", "name: a/b\n", [], ["name", "'a_b'"]),
    ("name: ..", "name: ..\n", [], ["name", "not a plain file name"]),
]


@pytest.mark.parametrize("case, text, argv, needles", NAME_CASES,
                         ids=[c[0] for c in NAME_CASES])
def test_bad_output_names_are_refused_before_any_work(case, text, argv, needles, tmp_path,
                                                      monkeypatch, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    base = {k: v for k, v in BASE.items() if k != "name"}
    if not text.startswith("name:"):
        base["name"] = "tiny"
    config = work / "c.yaml"
    config.write_text(text + yaml.safe_dump(base))
    before = tree(tmp_path)
    check(*cli(simulate_main, [config, *argv, "--quiet"], capsys), 2, needles)
    assert tree(tmp_path) == before                     # no file 'o', no runs/, no newdir


def test_bad_names_in_the_python_api(tmp_path):
    for changes in ({"name": "a\0b"}, {"name": "a\udcffb"}, {"name": "../x"},
                    {"output": str(tmp_path / "o\0.nc")}, {"output": str(tmp_path) + "/"}):
        with pytest.raises(ctpc.InputError):   # a bad name, or a bad output path
            ctpc.simulate({**BASE, **changes})
    with pytest.raises(OutputError, match="names a directory"):
        ctpc.simulate(BASE, out=str(tmp_path / "new") + "/")
    assert list(tmp_path.iterdir()) == []


def test_companion_suffixes_count_in_the_name_limit(tmp_path, capsys):
    """A 235-byte output name fits a simulation (+ .tmp-stream-PID) but not a training run,
    whose weights file NAME.weights.npz.tmp-PID is 21 bytes longer."""
    out = tmp_path / ("a" * 232 + ".nc")
    code, err = cli(simulate_main, [write_yaml(tmp_path / "c.yaml", BASE), "--out", out,
                                    "--quiet"], capsys)
    assert code == 0 and out.is_file(), err
    files = train_inputs(tmp_path)
    before = tree(tmp_path)
    check(*cli(train_main, [files["config file"], "--out", tmp_path / ("b" * 232 + ".nc"),
                            "--quiet"], capsys), 2,
          ["--out", "235 bytes", "NAME.weights.npz.tmp-PID", "at most 234 bytes"])
    assert tree(tmp_path) == before


def test_sweep_name_with_a_path_is_refused(tmp_path, no_cluster, monkeypatch, capsys):
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    config = write_yaml(work / "s.yaml", {**BASE, "name": "../x", "sweep": {"seed": [0, 1]}})
    before = tree(tmp_path)
    check(*cli(sweep_main, [config, "--quiet"], capsys), 2, ["name", "not a plain file name"])
    assert tree(tmp_path) == before
