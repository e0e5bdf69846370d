"""Training networks with BP, PC and PC-ALM (spec section 7): ``ctpc.train``.

    import ctpc
    ds = ctpc.train("models/train_digits.yaml", ["network.depth=16"], out="runs/d16.nc")

Modules: ``setup`` (configs -> model, rule, optimiser settings, data on the device), ``rules``
(BP, PC/PC-ALM inference + read-out, continuous plasticity), ``plasticity`` (the joint
neuron-weight solvers), ``metrics`` (accuracy, MSE, cross-entropy, BP alignment), ``loop`` (the
update loop, sync points, divergence), ``checkpoint`` (save, resume), ``dataset`` (history ->
xarray).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from .. import signals
from ..config import Config, ConfigError, TrainingConfig
from ..io import check_output_path, write_netcdf
from ..loading import load_config
from ..model import matmul_precision, resolve_device
from . import checkpoint as ckpt
from .dataset import training_dataset
from .loop import Trainer
from .setup import build_training

__all__ = ["train", "train_replicas", "prepare_config"]


def prepare_config(config, overrides=None) -> Config:
    """Load and validate a training config; a missing ``training:`` section means defaults."""
    cfg = load_config(config, overrides)
    if cfg.training is None:
        cfg = cfg.model_copy(deep=True)
        cfg.training = TrainingConfig()
    if cfg.backend != "torch":
        raise ConfigError(f"backend {cfg.backend!r} cannot train; training runs on backend "
                          "torch (set backend: torch)")
    if cfg.training.cuda_graph and resolve_device(cfg.device).type != "cuda":
        raise ConfigError("training.cuda_graph: true needs a CUDA device; this run is on the "
                          "CPU (set device: cuda on a GPU machine, or cuda_graph: false)")
    if cfg.data.source == "synthetic":
        raise ConfigError("data.source 'synthetic' has no train/test split to learn from; use "
                          "digits, mnist, idx or npz")
    return cfg


def train(config, overrides=None, *, out: str | Path | None = None, resume: bool = False,
          progress: bool = False, command: str | None = None) -> xr.Dataset:
    """Train one network and return its training dataset (written to ``out`` or the config's
    ``output`` when set, with the final weights beside it as ``<out>.weights.npz`` and a
    checkpoint ``<out>.ckpt.pt``). ``resume``: continue from that checkpoint (bit-identical on
    the CPU). A diverged run is returned with ``ds.attrs["status"] == "diverged"``.
    """
    cfg = prepare_config(config, overrides)
    target = out if out is not None else cfg.output
    if target is not None:
        target = check_output_path(target)
    elif resume:
        raise ConfigError("--resume needs an output path (--out or output:): the checkpoint "
                          "lives beside it")
    setup = build_training(cfg)
    kwargs = {"progress": progress}
    if target is not None:
        path, digest = ckpt.checkpoint_path(target), ckpt.run_digest(cfg)
        kwargs["checkpoint"] = lambda trainer: ckpt.save(trainer, path, digest)
        if resume and path.exists():
            blob = ckpt.load(path, digest)
            for t, saved in zip(setup.model.weights.tensors, blob["weights"]):
                t.copy_(saved)
            kwargs = ckpt.restore(blob, kwargs)
    with matmul_precision(cfg):
        state = Trainer(setup, **kwargs).run()
    ds = training_dataset(setup, state, 0, command)
    if target is not None:
        if ds.attrs["status"] == "ok":
            write_weights(setup.model.weights.matrices(0), ckpt.weights_path(target))
        write_netcdf(ds, target)
        ds.attrs["path"] = str(target)
    return ds


def train_replicas(cfgs: list[Config], progress: bool = False,
                   command: str | None = None) -> list[tuple[xr.Dataset, list[np.ndarray]]]:
    """Train configs that share :func:`ctpc.training.setup.training_key` as replicas of one
    tensor program; returns (dataset, final weights [W_1 .. W_L]) per config."""
    setup = build_training(cfgs)
    with matmul_precision(cfgs[0]):
        state = Trainer(setup, progress=progress).run()
    return [(training_dataset(setup, state, r, command),
             [m.cpu().numpy() for m in setup.model.weights.matrices(r)])
            for r in range(len(cfgs))]


def write_weights(matrices, path: Path) -> Path:
    """``w1 .. wL`` ([out, in], unscaled) as an .npz that ``network.weights`` loads; atomic."""
    arrays = {f"w{i}": np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m)
              for i, m in enumerate(matrices, start=1)}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.npz")
    try:
        with signals.deferred():
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

