"""Reruns and resuming (docs/reliability_new/resume.md): a checkpoint cannot run code; a rerun
never destroys a run (refused without --resume or --overwrite); an interrupt prints the command
that continues; --resume extends a run, bit for bit equal to a run of that length from the
start; --quiet prints nothing but errors; the divergence message names its reason."""
import importlib
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ctpc
from ctpc.config.paths import OutputError
from ctpc.common.signals import Terminated
from ctpc.cli.simulate import main as simulate_main
from ctpc.cli.sweep import main as sweep_main
from ctpc.cli.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "models" / "train_digits.yaml")
# float64 (every comparison is exact), 4 updates per epoch (256 examples, batches of 64)
TINY = ["network.depth=3", "network.width=8", "dtype=float64", "device=cpu",
        "data.train_subset=256", "training.eval_every=null", "training.checkpoint_every=2",
        "training.epochs=2"]
SIM = {"name": "tiny", "dtype": "float64", "device": "cpu",
       "network": {"width": 4, "depth": 3, "input_dim": 5, "output_dim": 3},
       "data": {"source": "synthetic", "batch_size": 2},
       "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 3},
       "record": {"samples": [0]}}


def targs(out, *flags, sets=()) -> list[str]:
    argv = [MODEL, "--out", str(out), "--quiet", *flags]
    for s in [*TINY, *sets]:
        argv += ["--set", s]
    return argv


def run(main, argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def outcome(main, argv, capsys) -> tuple[int, str, str]:
    code = run(main, argv)
    got = capsys.readouterr()
    assert "Traceback" not in got.err, got.err
    return code, got.out, got.err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.strip()


def companions(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.stem + ".ckpt.pt"), out.with_name(out.stem + ".weights.npz")


def same_run(a: Path, b: Path) -> None:
    """Every history array, coordinate and final weight equal to the bit (not the wall times)."""
    da, db = ctpc.open_results(a), ctpc.open_results(b)
    assert set(da.data_vars) == set(db.data_vars)
    assert da.sizes == db.sizes
    for v in [*da.data_vars, *da.coords]:
        if v != "eval_wall_time":
            np.testing.assert_array_equal(da[v].values, db[v].values, err_msg=v)
    for k in ("status", "n_updates", "updates_completed", "updates_per_epoch"):
        assert da.attrs[k] == db.attrs[k], k
    wa, wb = np.load(companions(a)[1]), np.load(companions(b)[1])
    assert wa.files == wb.files
    for k in wa.files:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch run (8 updates): its .nc, checkpoint and weights file."""
    out = tmp_path_factory.mktemp("done") / "done.nc"
    assert run(train_main, targs(out)) == 0
    return out


def copy_run(src: Path, out: Path, parts=("nc", "ckpt", "weights")) -> None:
    for part, s, d in zip(("nc", "ckpt", "weights"), (src, *companions(src)),
                          (out, *companions(out))):
        if part in parts:
            shutil.copyfile(s, d)


# ============================================================ 1. a checkpoint cannot run code
class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2", "pickle protocol 5"])
def test_crafted_checkpoint_is_refused_before_its_payload_runs(writer, tmp_path, capsys):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))       # the payload is live: unpickling runs it
    assert probe.exists()
    out, marker = tmp_path / "run.nc", tmp_path / "PAYLOAD_RAN"
    ckpt = companions(out)[0]
    blob = {"format": 2, "digest": "0" * 16, "update": 0, "weights": Payload(marker)}
    if writer == "torch.save":
        torch.save(blob, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(blob, protocol=int(writer[-1])))
    code, _, err = outcome(train_main, targs(out, "--resume"), capsys)
    assert not marker.exists(), "the checkpoint's payload ran"
    assert code == 2
    line = one_line(err)
    assert str(ckpt) in line and "nothing in it ran" in line and "--overwrite" in line, line
    # (protocol 5's frames are refused before the unpickler reaches the payload's name)
    assert ("posix.system" in line) == (writer != "pickle protocol 5"), line
    assert not out.exists()


def _unusable_checkpoints(tmp: Path, good: Path) -> dict:
    """name -> (write the checkpoint at path, extra --set, a phrase of the message)."""
    real = lambda: torch.load(good, weights_only=True)

    def altered(**changes):
        return lambda p: torch.save({**real(), **changes}, p)

    return {
        # what ctpc <= this change wrote: numpy arrays, readable only by running pickle code
        "old format 1 (numpy arrays)": (lambda p: torch.save(
            {"format": 1, "digest": "d" * 64, "history": {"train_loss": np.zeros(3)}}, p), [],
            "numpy"),
        "format 1 without arrays": (lambda p: torch.save({"format": 1}, p), [], "format 1"),
        "truncated": (lambda p: p.write_bytes(good.read_bytes()[:200]), [], "not a readable"),
        "empty": (lambda p: p.write_bytes(b""), [], "not a readable"),
        "a text file": (lambda p: p.write_text("not a checkpoint\n"), [],
                        "not a ctpc checkpoint"),
        "a list": (lambda p: torch.save([1, 2, 3], p), [], "not a ctpc training checkpoint"),
        "incomplete": (lambda p: torch.save({"format": 2, "digest": "x"}, p), [], "incomplete"),
        "another run": (lambda p: shutil.copyfile(good, p), ["seed=1"], "another configuration"),
        "other weight shapes": (altered(weights=[torch.zeros(2, 2)] * 3), [], "does not fit"),
        "history of another length": (altered(history={"train_loss": torch.zeros(3, 1)}), [],
                                      "does not fit"),
        "optimizer state of another run": (altered(opt_state={"step": [], "exp_avg": [],
                                                              "exp_avg_sq": []}),
                                           [], "does not fit"),
        "optimizer state of another optimiser": (altered(opt_state={"momentum_buffer": [None]}),
                                                 [], "does not fit"),
        "format 2, optimizer state of another run": (altered(
            format=2, optimizer={"state": {}, "param_groups": []}), [], "does not fit"),
        "shortened": (lambda p: shutil.copyfile(good, p), ["training.max_updates=4"],
                      "cannot be shortened"),
    }


UNUSABLE = list(_unusable_checkpoints(Path("."), Path(".")))


@pytest.mark.parametrize("case", UNUSABLE)
def test_unusable_checkpoint_is_exit_2_naming_it_and_the_fix(case, finished, tmp_path, capsys):
    write, sets, phrase = _unusable_checkpoints(tmp_path, companions(finished)[0])[case]
    out = tmp_path / "run.nc"
    ckpt = companions(out)[0]
    write(ckpt)
    code, _, err = outcome(train_main, targs(out, "--resume", sets=sets), capsys)
    assert code == 2, err
    line = one_line(err)
    assert str(ckpt) in line and "--overwrite" in line and phrase in line, line


def test_checkpoint_holds_only_what_weights_only_loads(finished):
    blob = torch.load(companions(finished)[0], weights_only=True)     # raises otherwise
    assert blob["format"] == 3 and blob["update"] == 8
    # the explicit optimiser state: Adam's step count and moments, one per parameter tensor
    assert set(blob["opt_state"]) == {"step", "exp_avg", "exp_avg_sq"}
    assert all(len(v) == len(blob["weights"]) for v in blob["opt_state"].values())
    assert [float(s) for s in blob["opt_state"]["step"]] == [8.0] * len(blob["weights"])


# ============================================================ 2. reruns never destroy work
@pytest.mark.parametrize("parts", [("nc", "ckpt", "weights"), ("ckpt",), ("weights",), ("nc",)],
                         ids=lambda p: "+".join(p))
def test_train_rerun_without_a_flag_is_refused(parts, finished, tmp_path, capsys):
    out = tmp_path / "done.nc"
    copy_run(finished, out, parts)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = outcome(train_main, targs(out), capsys)
    assert code == 2
    line = one_line(err)
    assert "--resume" in line and "--overwrite" in line and str(out) in line, line
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_simulate_rerun_is_refused_and_overwrite_replaces(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SIM))
    out = tmp_path / "s.nc"
    assert outcome(simulate_main, [cfg, "--out", out, "--quiet"], capsys)[0] == 0
    first = out.read_bytes()
    code, _, err = outcome(simulate_main, [cfg, "--out", out, "--quiet", "--set", "seed=1"],
                           capsys)
    assert code == 2 and "--overwrite" in one_line(err) and str(out) in err
    assert out.read_bytes() == first
    assert outcome(simulate_main, [cfg, "--out", out, "--quiet", "--set", "seed=1",
                                   "--overwrite"], capsys)[0] == 0
    assert ctpc.open_results(out).attrs["seed"] == 1


@pytest.mark.parametrize("parts", [("ckpt",), ("weights",)])
def test_simulate_onto_a_training_runs_files_is_refused(parts, finished, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SIM))
    out = tmp_path / "done.nc"
    copy_run(finished, out, parts)
    code, _, err = outcome(simulate_main, [cfg, "--out", out, "--quiet"], capsys)
    assert code == 2 and not out.exists()
    line = one_line(err)
    name = companions(out)[0 if parts == ("ckpt",) else 1].name
    assert name in line and "--overwrite" in line, line


def test_python_api_refuses_an_existing_output_unless_overwrite(finished, tmp_path):
    out = tmp_path / "s.nc"
    ctpc.simulate(SIM, out=out)
    with pytest.raises(OutputError, match="overwrite=True"):
        ctpc.simulate(SIM, out=out)
    ctpc.simulate(SIM, out=out, overwrite=True)
    copy_run(finished, tmp_path / "t.nc")
    with pytest.raises(OutputError, match="resume=True or overwrite=True"):
        ctpc.train(MODEL, TINY, out=tmp_path / "t.nc")
    ds = ctpc.train(MODEL, TINY + ["training.max_updates=2"], out=tmp_path / "t.nc",
                    overwrite=True)
    assert ds.attrs["updates_completed"] == 2


def test_train_overwrite_replaces_every_file_of_the_old_run(finished, tmp_path, capsys):
    out = tmp_path / "done.nc"
    copy_run(finished, out)
    code, _, err = outcome(train_main, targs(out, "--overwrite",
                                             sets=["training.max_updates=2"]), capsys)
    assert code == 0 and err == ""
    assert ctpc.open_results(out).sizes["update"] == 2
    assert torch.load(companions(out)[0], weights_only=True)["update"] == 2
    assert companions(out)[1].read_bytes() != companions(finished)[1].read_bytes()


def test_resume_and_overwrite_together_are_refused(finished, tmp_path, capsys):
    out = tmp_path / "done.nc"
    copy_run(finished, out)
    code, _, err = outcome(train_main, targs(out, "--resume", "--overwrite"), capsys)
    assert code == 2 and "--resume and --overwrite" in one_line(err)


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path, capsys):
    out = tmp_path / "new.nc"
    code, stdout, err = outcome(train_main, targs(out, "--resume",
                                                  sets=["training.max_updates=2"]), capsys)
    assert code == 0 and stdout == ""
    line = one_line(err)
    assert str(companions(out)[0]) in line and "starting the run from the beginning" in line
    assert ctpc.open_results(out).sizes["update"] == 2


def test_resume_of_a_run_without_its_checkpoint_is_refused(finished, tmp_path, capsys):
    out = tmp_path / "done.nc"
    copy_run(finished, out, ("nc", "weights"))
    before = out.read_bytes()
    code, _, err = outcome(train_main, targs(out, "--resume"), capsys)
    assert code == 2
    line = one_line(err)
    assert str(companions(out)[0]) in line and "--overwrite" in line, line
    assert out.read_bytes() == before


# ------------------------------------------------------------------ the command to continue
def _typed(module: str, argv: list[str]) -> str:
    return shlex.join([Path(sys.executable).name, "-m", module, *argv])


TRAIN_ARGV = [MODEL, "--out", "runs/my run.nc", "--set", "training.epochs=3"]


@pytest.mark.parametrize("exc, said, code", [(KeyboardInterrupt, "interrupted", 130),
                                             (Terminated, "terminated (SIGTERM)", 143)])
@pytest.mark.parametrize("flags, continued", [
    ([], ["--resume"]), (["--resume"], ["--resume"]), (["--overwrite"], ["--resume"]),
    (["--quiet", "--overwrite"], ["--quiet", "--resume"])])
def test_interrupted_training_prints_the_command_that_continues(
        exc, said, code, flags, continued, monkeypatch, capsys, tmp_path):
    def stop(*args, **kwargs):
        raise exc()
    monkeypatch.setattr(importlib.import_module("ctpc.cli.train"), "run_training", stop)
    monkeypatch.chdir(tmp_path)
    assert run(train_main, TRAIN_ARGV + flags) == code
    want = _typed("ctpc.train", TRAIN_ARGV + continued)
    assert capsys.readouterr().err == (f"ctpc.train: {said}; finished work is kept, no partial "
                                       f"file is left; to continue, run: {want}\n")


def test_interrupted_simulation_and_sweep_print_their_command(monkeypatch, capsys, tmp_path):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SIM, "sweep": {"seed": [0, 1]}}))
    monkeypatch.setattr(importlib.import_module("ctpc.cli.simulate"), "run_simulation", stop)
    argv = [str(cfg), "--out", str(tmp_path / "s.nc"), "--quiet"]
    assert run(simulate_main, argv) == 130
    err = capsys.readouterr().err.splitlines()[-1]        # after the note on the sweep section
    assert err == ("ctpc: interrupted; finished work is kept, no partial file is left; to run "
                   f"it again (from the beginning): {_typed('ctpc.simulate', argv)}")
    monkeypatch.setattr(importlib.import_module("ctpc.cli.sweep"), "run_sweep", stop)
    assert run(sweep_main, argv) == 130
    assert capsys.readouterr().err == (
        "ctpc.sweep: interrupted; finished work is kept, no partial file is left; to continue "
        f"(finished cells are skipped), run: {_typed('ctpc.sweep', argv)}\n")


def test_sigterm_then_the_printed_command_finishes_the_run_bit_for_bit(tmp_path):
    """A real `python -m ctpc.train` gets SIGTERM after its first checkpoint; the command its
    last line prints, run as printed, ends with the same file as an uninterrupted run."""
    sets = ["data.train_subset=640", "training.epochs=10", "training.checkpoint_every=5"]
    out = tmp_path / "killed.nc"
    argv = targs(out, sets=sets)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ctpc.train", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while not companions(out)[0].exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no checkpoint appeared: {proc.communicate()[1]}")
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert not out.exists(), "the run finished before the signal; make it longer"
    line = err.strip().splitlines()[-1]
    command = line.split("to continue, run: ", 1)[1]
    typed = shlex.split(command)
    assert typed == [Path(sys.executable).name, "-m", "ctpc.train", *argv, "--resume"]
    done = subprocess.run([sys.executable, *typed[1:]], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert run(train_main, targs(tmp_path / "full.nc", sets=sets)) == 0
    same_run(tmp_path / "full.nc", out)


# ------------------------------------------------------------------ extending a run
@pytest.mark.parametrize("first, then", [
    (["training.epochs=2"], ["training.epochs=5", "memory_limit_gb=50"]),
    # 6 updates end mid-epoch: that run's last evaluation is not one of the longer run's
    (["training.max_updates=6"], ["training.epochs=3"]),
    (["training.epochs=5", "training.max_updates=6"], ["training.epochs=5",
                                                       "training.max_updates=11"]),
], ids=["epochs 2 -> 5", "max_updates 6 -> 3 epochs", "max_updates 6 -> 11"])
def test_resume_extends_a_run_bit_for_bit(first, then, tmp_path, capsys):
    ext, full = tmp_path / "ext.nc", tmp_path / "full.nc"
    assert outcome(train_main, targs(ext, sets=first), capsys)[0] == 0
    code, _, err = outcome(train_main, targs(ext, "--resume", sets=then), capsys)
    assert code == 0 and err == "", err
    assert outcome(train_main, targs(full, sets=then), capsys)[0] == 0
    same_run(full, ext)


def _stop_after_checkpoint_4(out: Path, sets: list[str], monkeypatch, capsys) -> None:
    """Train to ``out`` with ``sets``, interrupted (Ctrl-C, exit 130) right after the
    checkpoint of update 4 is written."""
    from ctpc.training import checkpoint
    real_save = checkpoint.save

    def save_then_stop(path, learn, progress, digest):
        real_save(path, learn, progress, digest)
        if progress.update == 4:
            raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save", save_then_stop)
        assert outcome(train_main, targs(out, sets=sets), capsys)[0] == 130


def test_resume_extends_an_interrupted_run(tmp_path, monkeypatch, capsys):
    """An 8-update run interrupted right after its checkpoint at update 4, resumed with
    training.epochs=3: the same as 12 updates from the start."""
    out, full = tmp_path / "cut.nc", tmp_path / "full.nc"
    _stop_after_checkpoint_4(out, ["training.checkpoint_every=4"], monkeypatch, capsys)
    assert not out.exists() and torch.load(companions(out)[0], weights_only=True)["update"] == 4
    longer = ["training.checkpoint_every=4", "training.epochs=3"]
    assert outcome(train_main, targs(out, "--resume", sets=longer), capsys)[0] == 0
    assert outcome(train_main, targs(full, sets=longer), capsys)[0] == 0
    same_run(full, out)


@pytest.mark.parametrize("sets", [[], ["training.optimizer=sgd", "training.lr=0.05"]],
                         ids=["adam", "sgd momentum"])
def test_a_format_2_checkpoint_resumes_bit_for_bit(sets, tmp_path, monkeypatch, capsys):
    """A checkpoint of format 2 (before the explicit training state: the weights and the
    ``state_dict()`` of the torch.optim Adam / SGD object that stepped them) is converted on
    load and resumes bit for bit. It is built the old way: the first 4 updates replayed with a
    torch.optim object stepping the rule's gradients, which also gives the pure update's
    weights and optimiser state of the format-3 checkpoint at update 4, to the bit."""
    from ctpc.training import prepare_config
    from ctpc.training.loop import Batches
    from ctpc.training.setup import build_training
    out, full = tmp_path / "cut.nc", tmp_path / "full.nc"
    _stop_after_checkpoint_4(out, sets, monkeypatch, capsys)
    path = companions(out)[0]
    new = torch.load(path, weights_only=True)
    assert new["format"] == 3 and new["update"] == 4
    # the old way: a torch.optim object stepping the parameters in place
    setup = build_training(prepare_config(MODEL, [*TINY, *sets]))
    w, t = setup.model.weights, setup.training
    params = [p.clone() for p in w.tensors]
    opt = torch.optim.Adam(params, lr=setup.lr, betas=(0.9, 0.999), eps=1e-8) \
        if t.optimizer == "adam" else torch.optim.SGD(params, lr=setup.lr, momentum=t.momentum)
    batches = Batches(setup)
    with torch.no_grad():
        for u in range(4):
            grads, _ = setup.rule(w.like(params), *batches(u))
            for p, g in zip(params, grads.tensors):
                p.grad = g
            opt.step()
    for i, p in enumerate(params):
        assert torch.equal(p, new["weights"][i])
        for name, saved in new["opt_state"].items():
            assert torch.equal(opt.state[p][name].cpu(), saved[i]), name
    old = {k: v for k, v in new.items() if k != "opt_state"}
    torch.save({**old, "format": 2, "weights": [p.detach().clone() for p in params],
                "optimizer": opt.state_dict()}, path)
    code, _, err = outcome(train_main, targs(out, "--resume", sets=sets), capsys)
    assert code == 0 and err == "", err
    assert torch.load(path, weights_only=True)["format"] == 3       # rewritten as format 3
    assert outcome(train_main, targs(full, sets=sets), capsys)[0] == 0
    same_run(full, out)


def test_one_identity_for_sweep_cells_and_resume():
    from ctpc.config.identity import RESUME_MAY_CHANGE, cell_key, config_key, run_key
    load = lambda *o: ctpc.load_config(MODEL, list(o))
    a = load("training.epochs=3")
    longer = load("training.epochs=7", "training.max_updates=50")
    limited = load("training.epochs=3", "memory_limit_gb=50")
    # sweep cells of different lengths stay different cells; their hashes are those of before
    assert cell_key(a) != cell_key(longer) and cell_key(a) == cell_key(limited)
    import hashlib
    import json
    d = a.to_dict()
    for k in ("name", "description", "output", "sweep", "memory_limit_gb"):
        d.pop(k)
    # keys added later (network.bias, dynamics.noise, dynamics.delay, brian2.errors, ...):
    # hashed only when set, so at their defaults the key is the one of before
    from ctpc.config.identity import ADDED_KEYS
    for dotted, unset in ADDED_KEYS.items():
        section, _, key = dotted.rpartition(".")
        assert d[section].pop(key) == unset, dotted
    assert cell_key(a) == hashlib.sha256(
        json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    from ctpc.sweep import cells as grid
    assert grid.cell_key is cell_key
    # resume: the same run whatever its length or memory limit, another run for another seed
    saves_more = load("training.epochs=3", "training.checkpoint_every=2")
    assert run_key(a) == run_key(longer) == run_key(limited) == run_key(saves_more) == \
        config_key(a, leave_out=RESUME_MAY_CHANGE)
    assert cell_key(saves_more) != cell_key(a)      # a sweep cell's key is that of before
    assert run_key(a) != run_key(load("training.epochs=3", "seed=1"))
    assert cell_key(load("training.epochs=3", "network.bias=true")) != cell_key(a)
    assert cell_key(load("training.epochs=3", "dynamics.delay=0.0", "integrator.check_every=64",
                         "seed=0")) == cell_key(a)         # defaults spelled out: the same run


# ============================================================ 3. --quiet
def test_quiet_prints_nothing_and_the_default_output_is_kept(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SIM))
    assert outcome(simulate_main, [cfg, "--out", tmp_path / "q.nc", "--quiet"], capsys) == \
        (0, "", "")
    code, out, _ = outcome(simulate_main, [cfg, "--out", tmp_path / "l.nc"], capsys)
    assert code == 0 and "status: ok" in out and f"wrote {tmp_path / 'l.nc'}" in out \
        and "bp_cos(W_l)" in out
    assert outcome(train_main, targs(tmp_path / "t.nc", sets=["training.max_updates=2"]),
                   capsys) == (0, "", "")
    argv = [a for a in targs(tmp_path / "u.nc", sets=["training.max_updates=2"])
            if a != "--quiet"]
    code, out, _ = outcome(train_main, argv, capsys)
    assert code == 0 and "status: ok" in out and "wrote" in out and "accuracy" in out


@pytest.fixture(scope="module")
def inproc():
    from distributed import Client
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        yield client.scheduler.address


def test_quiet_sweep_prints_nothing(tmp_path, inproc, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SIM, "sweep": {"seed": [0, 1]}}))
    argv = [cfg, "--out", tmp_path / "s.nc", "--scheduler", inproc]
    assert outcome(sweep_main, argv + ["--quiet"], capsys) == (0, "", "")
    code, out, _ = outcome(sweep_main, argv, capsys)          # all cells done: quick
    assert code == 0 and "cells: 2 (" in out and "wrote" in out


# ============================================================ 4. the divergence message
NONFINITE_WEIGHTS = {"w1": np.full((4, 5), 1e200), "w2": np.full((4, 4), 1e200),
                     "w3": np.ones((3, 4))}
DIVERGING = {
    "growth": ({"integrator": {"scheme": "euler", "dt": 2.5, "steps": 200},
                "dynamics": {"tau_h": 10.0}},
               "its state grew beyond integrator.growth_bound = 1000 times its initial size "
               "(max(1, max|S_0|)), below integrator.divergence_bound = 1e+06"),
    "bound": ({"integrator": {"scheme": "euler", "dt": 2.5, "steps": 200,
                              "growth_bound": float("inf"), "divergence_bound": 1000.0},
               "dynamics": {"tau_h": 10.0}},
              "its state exceeded integrator.divergence_bound = 1000"),
    "non-finite": ({"network": {**SIM["network"], "activation": "linear"}},
                   "its state became non-finite (NaN or inf)"),
}


@pytest.mark.parametrize("reason", list(DIVERGING))
def test_divergence_message_states_its_reason(reason, tmp_path, capsys):
    changes, why = DIVERGING[reason]
    raw = yaml.safe_load(yaml.safe_dump(SIM))
    for k, v in changes.items():
        raw[k] = {**raw.get(k, {}), **v}
    if reason == "non-finite":
        np.savez(tmp_path / "w.npz", **NONFINITE_WEIGHTS)
        raw["network"]["weights"] = str(tmp_path / "w.npz")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "d.nc"
    code, stdout, err = outcome(simulate_main, [cfg, "--out", out, "--quiet"], capsys)
    assert code == 3 and stdout == ""
    line = one_line(err)
    ds = ctpc.open_results(out)
    assert ds.attrs["diverged_reason"] == reason
    assert line.startswith(f"ctpc: the run DIVERGED at t = {ds.attrs['diverged_at']:g} ms "
                           f"(step {ds.attrs['steps_completed'] + 1}; diverged_reason: "
                           f"{reason}): {why}. The trace up to the last bounded state is saved."), \
        line
    assert "non-finite or exceeded" not in line
    assert ("raise integrator.growth_bound" in line) == (reason == "growth")


def test_training_divergence_message_says_what_became_non_finite(tmp_path, capsys):
    out = tmp_path / "div.nc"
    code, stdout, err = outcome(train_main, targs(out, sets=[
        "dtype=float32", "training.optimizer=sgd", "training.lr=1e6", "training.momentum=0.0",
        "training.max_updates=40", "training.checkpoint_every=1"]), capsys)
    assert code == 3 and stdout == ""
    line = one_line(err)
    u = ctpc.open_results(out).attrs["diverged_at_update"]
    assert line.startswith(f"ctpc.train: training DIVERGED at update {u}: the "), line
    assert "became non-finite (NaN or inf)" in line and "or the weights became" not in line


def test_simulate_overwrite_of_a_training_run_removes_its_companions(finished, tmp_path):
    """A simulation that replaces a training run (--overwrite) leaves none of that run's files:
    its weights and checkpoint would otherwise sit beside a file they do not belong to."""
    from ctpc.config.paths import companion_path
    out = tmp_path / "t.nc"
    copy_run(finished, out)
    companions = [companion_path(out, k) for k in ("weights", "checkpoint")]
    assert any(p.exists() for p in companions)
    ds = ctpc.simulate(SIM, out=out, overwrite=True)
    assert "update" not in ds.dims and out.exists()
    assert not any(p.exists() for p in companions)
