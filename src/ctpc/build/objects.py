"""From validated configs to the torch objects of a run: network structure, dynamics, weights,
batch, rates and step, on one device and dtype. Every torch consumer (the torch backend, the
Brian2 backend's shared arrays, the stability analysis, the training loop, benchmarks) builds
through here, so a config means the same thing everywhere.

One config gives one network (R = 1); a list of configs that share every shape gives R replicas
stacked along the replica axis (see :mod:`ctpc.core.network` for the layout).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ctpc.build.resolved import require_resolved
from ctpc.config.schema import Config, ConfigError, delay_steps
from ctpc.data import load_batch
from ctpc.core.dynamics import Dynamics, Params, Rates, Scalar, per_replica
from ctpc.core.network import Network, Weights, init_biases, init_weights
from ctpc.core.noise import Noise, noise_of

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def device_kind(name: str) -> str:
    """'cpu' or 'cuda': the config's ``device`` with 'auto' resolved here (CUDA when available);
    never raises (a sweep's client may plan cells for GPU workers without a GPU of its own)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (CUDA when available); 'cuda' without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device(device_kind(name))
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: 'cuda' was asked for but this torch ({torch.__version__}) sees no CUDA GPU; "
            "install a CUDA build of torch (docs/guide/speed.md, 'Running on a GPU') or use --device cpu")
    return torch.device(name)


@contextlib.contextmanager
def matmul_precision(cfg: Config):
    """TF32 matrix products on CUDA while a run with ``cuda_tf32: true`` lasts (torch's flag
    is global: it is restored afterwards). No effect on the CPU or in float64."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(cfg.cuda_tf32)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def set_threads(n: int | str | None, cfg: Config | None = None) -> int | None:
    """Use ``n`` CPU threads for torch's kernels; returns the number set.

    ``n``: a count; ``'auto'`` (the command line's default): :func:`auto_threads` for ``cfg``
    (without a config: the free physical cores); None: leave torch's default (all cores)."""
    if n is None:
        return None
    if n == "auto":
        n = auto_threads(cfg)
    elif n < 1:
        raise ConfigError(f"--threads must be >= 1 or 'auto', got {n}")
    torch.set_num_threads(n)
    return n


# Work per inference step (multiply-adds of its matrix products, over the batch and replicas)
# below which a second thread costs more than it gains: measured by sims/bench_threads.py on
# this project's 2-core machine (docs/benchmarks.md, "Threads").
ONE_THREAD_BELOW_MACS = 2.0e6
CPU_SAMPLE_S = 0.05          # how long auto_threads watches the other processes' CPU use


def step_macs(cfg: Config) -> float:
    """Multiply-adds of one inference (or one BP) step's matrix products: each of the
    L weight matrices is applied forward and transposed, for every sample of the batch."""
    net = cfg.network
    n_in = net.input_dim if net.input_dim is not None else 64
    n_out = net.output_dim if net.output_dim is not None else 10
    per_sample = n_in * net.width + (net.depth - 2) * net.width ** 2 + net.width * n_out
    return 2.0 * per_sample * cfg.data.batch_size


def free_cores(sample_s: float = CPU_SAMPLE_S) -> int:
    """Physical cores this process may use that other processes are not busy on now (>= 1):
    the cores of its CPU affinity, minus the CPU time others used over ``sample_s`` seconds."""
    import psutil      # a dependency of Dask distributed
    logical = psutil.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:                                    # not on Linux
        allowed = logical
    cores = max(1, min(physical, allowed))
    busy = psutil.cpu_percent(interval=sample_s) / 100.0 * cores    # machine-wide share
    return max(1, min(cores, int(math.floor(cores - busy + 0.5))))


def auto_threads(cfg: Config | None) -> int:
    """``--threads auto``: one thread when a step's work is too small to share
    (:data:`ONE_THREAD_BELOW_MACS`), else the free physical cores (:func:`free_cores`)."""
    if cfg is not None and step_macs(cfg) < ONE_THREAD_BELOW_MACS:
        return 1
    return free_cores()


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


# What must agree between configs stacked as replicas: it fixes tensor shapes and the code run.
def shape_key(cfg: Config) -> tuple:
    net = cfg.network
    return (net.input_dim, net.width, net.depth, net.output_dim, net.activation,
            cfg.data.batch_size, cfg.dtype, cfg.dynamics.tau_e > 0, cfg.cuda_tf32,
            cfg.dynamics.noise.active,        # noisy solvers run other code (sigma may differ)
            delay_steps(cfg))                 # the delay's ring buffer has one slot per step


@dataclass
class Model:
    """Everything torch-side of R runs; ``params()`` bundles what a step needs."""
    net: Network
    dyn: Dynamics
    weights: Weights
    x: torch.Tensor | None  # [R, B, D]; None: a training model, fed batch by batch
    y: torch.Tensor | None  # [R, B, O]
    rates: Rates
    dt: Scalar             # ms; a python float when shared, else [R, 1, 1]
    noise: Noise | None = None   # dynamics.noise of the replicas (None: deterministic)

    @property
    def replicas(self) -> int:
        return self.weights.replicas

    def params(self) -> Params:
        return self.dyn.params(self.weights, self.x, self.y, self.rates)


def rates_of(cfgs: list[Config], device, dtype) -> Rates:
    taus = [c.rates() for c in cfgs]
    return Rates.from_taus([c.dynamics.rho for c in cfgs], [t[0] for t in taus],
                           [t[1] for t in taus], [c.dynamics.tau_e for c in cfgs], device, dtype)


def initial_weights(cfgs: list[Config], device, dtype, from_files=None) -> Weights:
    """The initial weights of configs stacked as replicas (:func:`ctpc.core.network.
    init_weights`). ``from_files``: per config, what was read from its ``network.weights``;
    default: what resolving read (the resolved configs' ``found.weights``), so that no run
    reads the file again."""
    if from_files is None:
        from_files = [require_resolved(c, "initial_weights").found.weights for c in cfgs]
    biases = [init_biases(c, from_file=f) for c, f in zip(cfgs, from_files)]
    return Weights.stack([init_weights(c, from_file=f) for c, f in zip(cfgs, from_files)],
                         device, dtype, biases=None if biases[0] is None else biases)


def build_model(cfgs: Config | list[Config], device: torch.device | None = None, *,
                batch: bool = True) -> Model:
    """Network, dynamics, weights, batch, rates and dt of one resolved config
    (:func:`ctpc.build.resolve.resolve`), or of several stacked as replicas (they must share
    :func:`shape_key`). The weights and, where resolving computed lambda_max on it, the batch
    come from the configs' ``found``. ``batch=False``: no batch (a training model, fed the
    training data batch by batch): ``x`` and ``y`` are None."""
    cfgs = [cfgs] if isinstance(cfgs, Config) else list(cfgs)
    for c in cfgs:
        require_resolved(c, "build_model")
    keys = {shape_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError(f"replicas must share sizes, activation, batch, dtype and error-neuron "
                         f"mode; got {sorted(keys, key=repr)}")
    first = cfgs[0]
    device = device if device is not None else resolve_device(first.device)
    dtype = DTYPES[first.dtype]
    net = Network.from_config(first, device, dtype)
    weights = initial_weights(cfgs, device, dtype)
    x = y = None
    if batch:
        batches = [c.found.batch if c.found.batch is not None else
                   load_batch(c.data, c.network, c.seed) for c in cfgs]
        as_t = lambda arrays: torch.as_tensor(np.stack(arrays), device=device, dtype=dtype)
        x, y = as_t([b[0] for b in batches]), as_t([b[1] for b in batches])
    dt = per_replica([c.integrator.dt for c in cfgs], device, dtype)
    dyn = Dynamics(net, first.dynamics.tau_e > 0)
    noise = noise_of([(c.dynamics.noise.h, c.dynamics.noise.e, c.dynamics.noise.lam)
                      for c in cfgs], [c.seed for c in cfgs], dyn.n_pop, device, dtype)
    return Model(net, dyn, weights, x, y, rates_of(cfgs, device, dtype), dt, noise)
