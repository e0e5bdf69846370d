"""Checkpoints of a training run: everything needed to continue it bit for bit.

A checkpoint holds the weights, the optimiser state, the update count (which fixes the epoch,
the position in it and so the data order, whose permutations are seeded by ``seed`` and the
epoch), the per-update history and evaluations so far, the wall time so far, torch's RNG state,
and a digest of the resolved configuration and of every input file it names. ``--resume``
refuses a checkpoint whose digest differs: a resumed run never reuses stale results. Files are
written under a temporary name and renamed (atomic).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .. import signals
from ..config import Config, ConfigError
from .loop import Trainer, TrainState

FORMAT = 1


def checkpoint_path(out: str | Path) -> Path:
    """``<output without .nc>.ckpt.pt``."""
    return Path(out).with_name(_stem(Path(out)) + ".ckpt.pt")


def weights_path(out: str | Path) -> Path:
    """``<output without .nc>.weights.npz``: the final weights, loadable by network.weights."""
    return Path(out).with_name(_stem(Path(out)) + ".weights.npz")


def _stem(out: Path) -> str:
    return out.name[:-3] if out.name.endswith(".nc") else out.name


def _file_digest(path: Path, h) -> None:
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.is_file():
                h.update(child.name.encode())
                _file_digest(child, h)
    elif path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)


def run_digest(cfg: Config) -> str:
    """SHA-256 of what determines the run's results: the resolved config (without its name,
    description and output) and the bytes of the data and weight files it names."""
    d = cfg.to_dict()
    for k in ("name", "description", "output", "sweep"):
        d.pop(k, None)
    h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode())
    for path in (cfg.data.path, cfg.network.weights):
        if path is not None:
            _file_digest(Path(path), h)
    return h.hexdigest()


def save(trainer: Trainer, path: Path, digest: str) -> None:
    st = trainer.state
    blob = {"format": FORMAT, "digest": digest, "update": st.update,
            "weights": [t.detach().cpu() for t in trainer.weights.tensors],
            "optimizer": trainer.optimizer.state_dict(),
            "history": st.history, "evals": st.evals, "diverged": st.diverged,
            "elapsed_s": trainer.elapsed(), "train_s": st.train_s,
            "torch_rng": torch.get_rng_state()}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with signals.deferred():          # a signal waits until the checkpoint is whole
            torch.save(blob, tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, digest: str) -> dict:
    """The checkpoint at ``path``, refused (ConfigError) if it belongs to another run."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is the user's input
        raise ConfigError(f"--resume: cannot read the checkpoint {str(path)!r} ({exc}); delete "
                          "it to start afresh") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ConfigError(f"--resume: {str(path)!r} is not a ctpc training checkpoint")
    if blob["digest"] != digest:
        raise ConfigError(
            f"--resume: the checkpoint {str(path)!r} was written by a run with another "
            "configuration or other input files; resuming would mix results. Run without "
            "--resume to start afresh, or restore the original configuration and files")
    return blob


def restore(blob: dict, trainer_kwargs: dict) -> dict:
    """Trainer keyword arguments (state, optimizer_state) from a loaded checkpoint."""
    state = TrainState(update=blob["update"], history=blob["history"], evals=blob["evals"],
                       diverged=blob["diverged"], elapsed_s=blob["elapsed_s"],
                       train_s=blob["train_s"])
    torch.set_rng_state(blob["torch_rng"])
    return {**trainer_kwargs, "state": state, "optimizer_state": blob["optimizer"]}
