"""From validated configs to the objects of a training run: the model (weights of R replicas),
the learning rule, the optimiser, the data on the device, and the resolved numbers (lr, eta_h).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ctpc.config.schema import Config, ConfigError, TrainingConfig
from ctpc.data import DataSplit, labelled_split_size, load_split
from ctpc.core.compiled import check_compiler, keep_freed_buffers
from ctpc.core.solvers import make_solver
from ctpc.build.objects import Model, build_model, resolve_device
from ctpc.build.resolved import Resolved
from ctpc.common.schemes import scheme as scheme_info
from ctpc.training.plasticity import plastic_solver
from ctpc.training.rules import BPRule, CompiledInferenceRule, InferenceRule, PlasticRule


def training_config(cfg: Config) -> TrainingConfig:
    """The ``training:`` section, or the defaults for a config without one. Computed once per
    run, by :func:`ctpc.training.prepare_config`, which puts it into the config it resolves;
    the functions below read that section (:func:`_training`)."""
    return cfg.training if cfg.training is not None else TrainingConfig()


def _training(cfg: Config) -> TrainingConfig:
    """The section of a config prepared for training (as read); the defaults are computed only
    for a config without one (a simulation config given to these functions)."""
    return cfg.training if cfg.training is not None else training_config(cfg)


def resolved_lr(cfg: Config) -> float:
    """training.lr, or the paper's rule lr = 1e-3 sqrt(N / L) for 'auto' (spec section 7)."""
    lr = _training(cfg).lr
    return 1e-3 * math.sqrt(cfg.network.width / cfg.network.depth) if lr == "auto" else lr


# What replicas of one training program must share besides shapes (ctpc.build.objects.shape_key):
# the data they draw from, the control flow of the rule and of the loop.
def training_key(cfg: Config) -> tuple:
    t, it, d = _training(cfg), cfg.integrator, cfg.data
    rule = ("bp",) if cfg.dynamics.method == "bp" else (
        it.scheme, it.n_steps, it.inner_steps, it.weight_credit_timing, t.plasticity, t.tau_w,
        it.compile)
    return (d.source, str(d.path), d.mean, d.std, d.drop_last, d.train_subset, d.test_subset,
            cfg.dynamics.method == "bp", rule, t.optimizer, resolved_lr(cfg), t.momentum,
            t.epochs, t.max_updates, t.eval_every, t.checkpoint_every, t.probe_size,
            t.eval_batch_size, t.cuda_graph, cfg.device)


@dataclass
class DeviceSplit:
    """A split on the device: x [n, D], one-hot y [n, O], labels [n] (int64)."""
    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @staticmethod
    def of(split: DataSplit, device, dtype) -> "DeviceSplit":
        as_t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), device=device, dtype=dt)
        return DeviceSplit(as_t(split.x, dtype), as_t(split.y, dtype),
                           as_t(split.labels, torch.long))


@dataclass
class TrainSetup:
    cfgs: list[Config]
    model: Model
    rule: object
    train: DeviceSplit
    test: DeviceSplit
    lr: float
    updates_per_epoch: int
    total_updates: int

    @property
    def cfg(self) -> Config:
        return self.cfgs[0]

    @property
    def training(self) -> TrainingConfig:
        return _training(self.cfg)

    @property
    def replicas(self) -> int:
        return len(self.cfgs)


def make_rule(cfg: Config, model: Model):
    """The learning rule of ``dynamics.method`` (and ``training.plasticity``)."""
    if cfg.dynamics.method == "bp":
        return BPRule(model.net)
    it, t = cfg.integrator, _training(cfg)
    solver = make_solver(model.dyn, it.scheme, inner_steps=it.inner_steps,
                         weight_credit_timing=it.weight_credit_timing, noise=model.noise)
    if compilable(cfg, model.net.device):
        check_compiler()
        keep_freed_buffers()
        return CompiledInferenceRule(model.dyn, solver, it.n_steps, model.rates,
                                  cfg.dynamics.method, cfg.data.batch_size, it.compile_mode,
                                  dt=model.dt)
    rule = InferenceRule(model.dyn, solver, it.n_steps, model.rates, cfg.dynamics.method,
                         dt=model.dt, noisy=model.noise is not None)
    if t.plasticity == "continuous":
        return PlasticRule(rule, plastic_solver(solver, t.tau_w))
    return rule


def compilable(cfg: Config, device: torch.device) -> bool:
    """Whether a PC / PC-ALM training update runs as one compiled presentation
    (:mod:`ctpc.core.compiled`): ``integrator.compile`` (true, 'unrolled' or 'loop') on the CPU, a
    Gauss-Seidel scheme, instantaneous error neurons, no continuous plasticity, no
    ``dynamics.noise`` (the compiled programs are deterministic: a noisy run steps eagerly).
    (Elsewhere compile is ignored by training.)"""
    return (cfg.integrator.compile_mode is not None and not cfg.dynamics.noise.active
            and scheme_info(cfg.integrator.scheme).gauss_seidel
            and not cfg.dynamics.tau_e > 0 and _training(cfg).plasticity != "continuous"
            and device.type == "cpu")


def check_machine(cfg: Config) -> None:
    """What a training run of ``cfg`` refuses on the machine that runs it, before building
    anything (ConfigError): its device (:func:`ctpc.build.objects.resolve_device`), CUDA graphs off
    CUDA, and a compiled presentation (:func:`compilable`) without a C++ compiler."""
    device = resolve_device(cfg.device)
    if _training(cfg).cuda_graph and device.type != "cuda":
        raise ConfigError("training.cuda_graph: true needs a CUDA device; this run is on the "
                          "CPU (set device: cuda on a GPU machine, or cuda_graph: false)")
    if cfg.dynamics.method != "bp" and compilable(cfg, device):
        check_compiler()


def check_data(cfg: Config) -> None:
    """What a training run of ``cfg`` refuses in its data before building anything
    (ConfigError): both splits must hold class labels, and the training split must fill the
    schedule (:func:`schedule`). Reads the (cached) files, normalises nothing."""
    n_train = labelled_split_size(cfg.data, cfg.network, "train")
    labelled_split_size(cfg.data, cfg.network, "test")
    schedule(cfg, n_train)


def schedule(cfg: Config, n_train: int) -> tuple[int, int]:
    """(updates per epoch, total updates) of a training run on ``n_train`` examples;
    ConfigError when the data cannot fill a batch or the probe batch."""
    t, b = _training(cfg), cfg.data.batch_size
    per_epoch = n_train // b if cfg.data.drop_last else -(-n_train // b)
    if per_epoch == 0:
        raise ConfigError(f"data.batch_size ({b}) is larger than the {n_train} training "
                          "examples and data.drop_last is true: no full batch; lower "
                          "data.batch_size or set data.drop_last: false")
    total = t.epochs * per_epoch
    if t.max_updates is not None:
        total = min(total, t.max_updates)
    if t.probe_size is not None and t.probe_size > n_train:
        raise ConfigError(f"training.probe_size ({t.probe_size}) exceeds the {n_train} "
                          "training examples; lower it, or set it to null (data.batch_size)")
    return per_epoch, total


def build_training(cfgs: Config | list[Config]) -> TrainSetup:
    """Everything a training run of one config, or of replicas that share
    :func:`training_key`, needs (data loaded and checked, weights initialised): one model, no
    simulation batch. The configs are resolved training configs
    (:func:`ctpc.training.prepare_config`, or :func:`ctpc.load_config` of a config with a
    ``training:`` section)."""
    cfgs = [cfgs] if isinstance(cfgs, Config) else list(cfgs)
    for c in cfgs:
        if not isinstance(c, Resolved) or c.training is None:
            raise TypeError("build_training needs configs resolved for training "
                            "(ctpc.training.prepare_config, or ctpc.load_config of a config "
                            f"with a training: section); got {type(c).__name__} "
                            f"{'without a training section' if c.training is None else ''}"
                            .rstrip())
    keys = {training_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError("training replicas must share data, rule, optimiser and schedule")
    cfg = cfgs[0]
    model = build_model(cfgs, batch=False)
    dev, dtype = model.net.device, model.net.dtype
    train = DeviceSplit.of(load_split(cfg.data, cfg.network, "train"), dev, dtype)
    test = DeviceSplit.of(load_split(cfg.data, cfg.network, "test"), dev, dtype)
    per_epoch, total = schedule(cfg, train.n)
    return TrainSetup(cfgs, model, make_rule(cfg, model), train, test, resolved_lr(cfg),
                      per_epoch, total)
