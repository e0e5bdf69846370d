"""Training networks with BP, PC and PC-ALM (spec section 7): ``ctpc.train``.

    import ctpc
    ds = ctpc.train("models/train_digits.yaml", ["network.depth=16"], out="runs/d16.nc")

Modules: ``setup`` (configs -> model, rule, optimiser settings, data on the device), ``rules``
(BP, PC/PC-ALM inference + read-out, continuous plasticity), ``plasticity`` (the joint
neuron-weight solvers), ``metrics`` (accuracy, MSE, cross-entropy, BP alignment), ``loop`` (the
update loop, sync points, divergence), ``checkpoint`` (save, resume), ``history`` (history ->
xarray).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ctpc.config.schema import Config, ConfigError
from ctpc.config.paths import OutputError
from ctpc.results.dataset import write_netcdf
from ctpc.config.paths import TRAINING_COMPANIONS, check_outputs, run_inputs, write_atomically
from ctpc.build.resolve import (Resolved, config_file_of, load_config, no_overrides, resolve,
    warn_unused_by_bp)
from ctpc.build.objects import matmul_precision
from ctpc.training import checkpoint as ckpt
from ctpc.training.history import training_dataset
from ctpc.training.loop import Trainer
from ctpc.training.setup import build_training, check_data, check_machine, training_config

__all__ = ["train", "train_replicas", "run_training", "prepare_config", "check_training"]


def prepare_config(config, overrides=None) -> Resolved:
    """Load, validate and resolve a training config, once (a missing ``training:`` section
    means defaults), and make the checks of :func:`check_training`. A config resolved for
    training already (:func:`ctpc.load_config` of a config with a ``training:`` section, or
    this function's result) is not resolved again; one resolved without a ``training:``
    section is a different config (the defaults added), resolved as a training run."""
    if isinstance(config, Resolved) and config.training is not None and \
            no_overrides(overrides):
        cfg = config
    else:
        cfg = load_config(config, overrides, resolve_files=False)
        training = training_config(cfg)           # the defaults, computed once for the run
        if cfg.training is None:
            cfg.training = training
        # as a training run: its schedule's memory, no trace-size check
        cfg = resolve(cfg, config_file=config_file_of(config))
    check_training(cfg)
    return cfg


def check_training(cfg: Config, *, machine: bool = True) -> None:
    """Everything a training run of ``cfg`` refuses before its first update, without building
    it (ConfigError): the backend, the data source, the splits and the schedule
    (:func:`.setup.check_data`), and with ``machine`` what depends on the machine that runs it
    (:func:`.setup.check_machine`: device, CUDA graphs, C++ compiler). A sweep calls it for
    every cell before any cell runs."""
    if cfg.backend != "torch":
        raise ConfigError(f"backend {cfg.backend!r} cannot train; training runs on backend "
                          "torch (set backend: torch)")
    if cfg.data.source == "synthetic":
        raise ConfigError("data.source 'synthetic' has no train/test split to learn from; use "
                          "digits, mnist, idx or npz")
    check_data(cfg)
    if machine:
        check_machine(cfg)


def train(config, overrides=None, *, out: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = False,
          command: str | None = None) -> xr.Dataset:
    """Train one network and return its training dataset (written to ``out`` or the config's
    ``output`` when set, with the final weights beside it as ``<out>.weights.npz`` and a
    checkpoint ``<out>.ckpt.pt``). A diverged run is returned with
    ``ds.attrs["status"] == "diverged"``.

    An existing run at the output (any of those three files) is never replaced silently:
    ``resume`` continues it from its checkpoint (bit-identical on the CPU; with a larger
    ``training.epochs`` or ``training.max_updates`` it extends the run, identical to a run of
    that length from the start), ``overwrite`` replaces it (its files are removed when the new
    run starts); without either it is a ConfigError. ``resume`` without a checkpoint starts
    from the beginning (a warning says so).
    """
    cfg = prepare_config(config, overrides)
    warn_unused_by_bp(cfg)          # a single run; sweep cells (train_replicas) do not warn
    _refuse_contradiction(resume, overwrite)
    target = out if out is not None else cfg.output
    if target is not None:
        # the one check of outputs (ctpc.config.paths): the output, its weights file and checkpoint
        target = check_outputs(target, "--out" if out is not None else "output",
                               inputs=run_inputs(cfg, config_file=cfg.config_file),
                               companions=TRAINING_COMPANIONS)
    return _train(cfg, target, "--out" if out is not None else "output", resume=resume,
                  overwrite=overwrite, progress=progress, command=command)


def run_training(cfg: Resolved, target: Path, *, what: str = "--out", resume: bool = False,
                 overwrite: bool = False, progress: bool = False,
                 command: str | None = None) -> xr.Dataset:
    """:func:`train` of a config :func:`prepare_config` gave, to an output ``target`` that
    :func:`ctpc.config.paths.check_outputs` has checked (with the training companions), named
    ``what`` in messages: what ``python -m ctpc.train`` runs once it has resolved its config
    and checked its output (neither happens again here)."""
    if not isinstance(cfg, Resolved) or cfg.training is None:
        raise TypeError("run_training needs a config prepare_config gave (resolved for "
                        f"training); got {type(cfg).__name__}")
    warn_unused_by_bp(cfg)
    _refuse_contradiction(resume, overwrite)
    return _train(cfg, target, what, resume=resume, overwrite=overwrite, progress=progress,
                  command=command)


def _refuse_contradiction(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume continues "
                          "the run at the output, --overwrite replaces it; give one of them")


def _train(cfg: Resolved, target: Path | None, what: str, *, resume: bool, overwrite: bool,
           progress: bool, command: str | None) -> xr.Dataset:
    """The run once its config is resolved and its output (``target``, or None) checked."""
    if target is None and resume:
        raise ConfigError("--resume needs an output path (--out or output:): the checkpoint "
                          "lives beside it")
    blob, existing = None, []
    if target is not None:
        path, digest = ckpt.checkpoint_path(target), ckpt.run_digest(cfg)
        existing = [p for p in (target, path, ckpt.weights_path(target)) if p.exists()]
        names = ", ".join(p.name for p in existing)
        if resume and path.exists():
            blob = ckpt.load(path, digest)           # refused here, before any work
        elif resume and existing:
            raise OutputError(
                f"--resume: there is no checkpoint {str(path)!r} to continue {str(target)!r} "
                f"from (only {names}: the run diverged before its first checkpoint, or the "
                "checkpoint was removed); rerun with --overwrite instead of --resume to run it "
                "again from the start")
        elif resume:
            warnings.warn(f"--resume: no checkpoint {str(path)!r} yet (nothing to continue); "
                          "starting the run from the beginning", stacklevel=3)
        elif existing and not overwrite:
            raise OutputError(
                f"{what} {str(target)!r} already holds a "
                f"training run ({names}); add --resume "
                "to continue it (with --set training.epochs=N to extend it) or --overwrite to "
                "replace it (Python API: resume=True or overwrite=True)")
    setup = build_training(cfg)
    kwargs = {"progress": progress}
    if target is not None:
        kwargs["checkpoint"] = lambda learn, run: ckpt.save(path, learn, run, digest)
        if blob is not None:     # the checkpoint's state, checked against this run (exit 2)
            kwargs = ckpt.restore(blob, kwargs, path, setup)
        elif overwrite:
            for p in existing:          # the replaced run: none of it stays beside the new one
                p.unlink(missing_ok=True)
    with matmul_precision(cfg):
        trainer = Trainer(setup, **kwargs)
        state = trainer.run()
    ds = training_dataset(setup, state, 0, command)
    if target is not None:
        if ds.attrs["status"] == "ok":
            write_weights(setup.model.weights.arrays(0), ckpt.weights_path(target))
        else:       # an earlier (shorter, resumed) run's weights are not this run's
            ckpt.weights_path(target).unlink(missing_ok=True)
        write_netcdf(ds, target)
        ds.attrs["path"] = str(target)
    return ds


def train_replicas(cfgs: list[Config], progress: bool = False,
                   command: str | None = None) -> list[tuple[xr.Dataset, list[np.ndarray]]]:
    """Train configs that share :func:`ctpc.training.setup.training_key` as replicas of one
    tensor program; returns (dataset, final weights [W_1 .. W_L]) per config. Configs resolved
    for training (a sweep's cells, :func:`prepare_config`'s results) are taken as they are;
    others are prepared first, once."""
    cfgs = [c if isinstance(c, Resolved) and c.training is not None else prepare_config(c)
            for c in cfgs]
    setup = build_training(cfgs)
    with matmul_precision(cfgs[0]):
        state = Trainer(setup, progress=progress).run()
    return [(training_dataset(setup, state, r, command), setup.model.weights.arrays(r))
            for r in range(len(cfgs))]


def write_weights(arrays: dict[str, np.ndarray], path: Path) -> Path:
    """One network's parameters as the weights file that ``network.weights`` loads
    (:meth:`ctpc.core.network.Weights.arrays`: ``w1 .. wL`` [out, in], unscaled, and
    ``b1 .. bL`` with biases) as an .npz; atomic."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    def write(tmp: Path) -> None:    # NAME.tmp-PID, removed by the next run if this one is killed
        with open(tmp, "wb") as f:      # a file object: savez would append .npz to a name
            np.savez(f, **arrays)
    return write_atomically(path, write)

