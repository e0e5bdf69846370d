"""A full disk while writing a checkpoint, a weights file (a training run's or a sweep cell's)
or a result is exit 2 with one line that says so, and leaves nothing under the final name nor a
temporary (issue class 7)."""
import errno

import numpy as np
import pytest
import torch
import yaml

from ctpc.config.paths import OutputError, write_atomically
from ctpc.cli.train import main as train_main

CFG = {"name": "t", "dtype": "float64", "device": "cpu",
       "network": {"width": 4, "depth": 3}, "data": {"source": "digits", "batch_size": 16},
       "dynamics": {"method": "pcalm", "state_lr": 0.2, "alpha": 1.0},
       "integrator": {"scheme": "discrete", "budget": 4},
       "training": {"epochs": 1, "max_updates": 3, "eval_every": None}}


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_atomically_full_disk(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(OutputError, match="writing .*x.bin' failed.*No space left"):
        write_atomically(target, lambda tmp: (tmp.write_bytes(b"half"), _full()))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("what", ["checkpoint", "weights"])
def test_full_disk_during_training_is_exit_2(tmp_path, monkeypatch, capsys, what):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    if what == "checkpoint":
        monkeypatch.setattr(torch, "save", _full)
    else:
        monkeypatch.setattr(np, "savez", _full)
    out = tmp_path / "o.nc"
    assert train_main([str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    suffix = ".ckpt.pt" if what == "checkpoint" else ".weights.npz"
    assert not (tmp_path / f"o{suffix}").exists()
    assert not list(tmp_path.glob("*.tmp-*"))
