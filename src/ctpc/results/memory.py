"""How much memory a run needs, estimated from its config before anything is allocated.

A run that cannot fit must fail at once with a message that says what to shrink, not after
minutes of allocation with a ``MemoryError`` (or a machine that swaps itself to a halt). The
estimate is pure arithmetic on the resolved sizes, so :func:`ctpc.build.resolve.resolve` runs it when a
config is loaded, and :func:`ctpc.sim.recording.plan_recording` checks the traces before it builds
any per-step array. No torch here.

Terms (``s`` = 4 or 8 bytes for float32 / float64; ``W = N·D + (L−2)·N² + O·N`` weight values;
``P = 3`` populations with leaky error neurons, else 2; one state is ``P·H·B·N`` values):

==========================  ====================================================================
weights                     ``W·(8 + 4s)``: the float64 initial copy, the model's copy, and
                            at each record step the read-out dL/dW and its alignment temporaries
BP reference                ``2·W·s + 4·H·B·N·s``: BP gradients, the autograd leaves, the
                            forward activations and the adjoints
state                       ``P·H·B·N·s``
solver temporaries          ``(stages + 3)`` states: the Runge-Kutta stages (1 for the
                            Gauss-Seidel schemes) and the step's residuals and predictions
record traces               ``3 × (T+1)·layers·samples·units·variables·s``: the buffers, their
                            host copy and the per-run copy that becomes the dataset; a run that
                            streams its records (``record.stream_mb``) holds one chunk of them
record series               ``3 × (T+1)·(2 + 4H + 2L)·s``: energy and loss, the four per-layer
                            norms, BP cosine and relative error
record chunk                ``min(16 MB, (T+1)·c)``, ``c = ((P+5)·H·B·N + 3·W + 2·B·O)·s``: the
                            staged states of the record slots summarised together, and their
                            summary's temporaries (:func:`record_slot_bytes`)
divergence-check buffer     ``check_every·s``
batch                       ``2·B·(D + O)·8``
Brian2 objects              backend brian2 only: ``48`` bytes per synapse for construction
                            ``synapses`` (every weight replicated per sample), ``12`` float64
                            variables per neuron, and for cpp_standalone the full-state monitors
==========================  ====================================================================

``T+1`` is the number of record slots (the record steps plus the final state). The limit is
``memory_limit_gb`` when set, else half of this machine's physical memory (read once).

A training run (a ``training:`` section, with the sizes of its splits known) adds
(``U`` updates = ``min(epochs·⌈n/B⌉, max_updates)``, ``E`` evaluations, ``C`` checkpoints):

==========================  ====================================================================
training history            ``4 × U·(4 + 3H)·s``: the per-update buffers on the device, their
                            host copy (and its growing concatenation) and the dataset
evaluation history          ``E·(1536 + 16·(7 + 2L))``: the metrics of every evaluation
training schedule           ``80·(E + C)``: the sets of evaluation and checkpoint updates
training data               ``(n + m)·(D + O)·(8 + s) + 16·(n + m)``: both splits, on the host
                            (float64) and on the device
==========================  ====================================================================
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

from ctpc.config.schema import Config, ConfigError, layer_shapes
from ctpc.results.run_result import SERIES_LAYER, SERIES_SCALAR, SERIES_WEIGHT
from ctpc.common.schemes import SCHEMES

GB = 2 ** 30
MB = 2 ** 20
# Memory one chunk of record slots may take (the staged states and the temporaries of their
# batched summary, see ctpc.sim.recording.Recorder). Measured (docs/benchmarks.md) with the
# summary's temporaries kept from chunk to chunk: 1 to 64 MB chunks are within the VM's noise
# at (N, L) = (128, 32) and (32, 128), and 8 to 32 MB beat one slot per chunk by 1.2-1.6x at
# the smaller cells; 16 MB stays a small fraction of any device's memory.
RECORD_CHUNK_BYTES = 16 * MB
FALLBACK_RAM_BYTES = 16 * GB     # when the OS does not say (the default limit is half of it)


@functools.lru_cache(maxsize=1)
def physical_memory() -> int:
    """Bytes of physical memory of this machine (read once per process)."""
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_RAM_BYTES
    return pages * page if pages > 0 and page > 0 else FALLBACK_RAM_BYTES


def limit_bytes(cfg: Config) -> float:
    if cfg.memory_limit_gb is not None:
        return cfg.memory_limit_gb * GB
    return physical_memory() / 2


def n_record_slots(n_steps: int, every: int) -> int:
    """Record steps of a run (0, every, 2·every ... and the final step), by arithmetic: no array
    of the steps is built, whatever ``n_steps`` is."""
    return n_steps // every + 1 + (1 if n_steps % every else 0)


def _itemsize(cfg: Config) -> int:
    return 4 if cfg.dtype == "float32" else 8


def state_bytes(cfg: Config) -> int:
    """Bytes of one state population of one replica: [H, B, N] (activities, multipliers or
    errors) at the config's dtype. Input and output sizes must be resolved."""
    return cfg.n_hidden * cfg.data.batch_size * cfg.network.width * _itemsize(cfg)


def presentation_work(cfg: Config) -> int:
    """Multiply-adds of one presentation of one replica, as a relative cost (sweep order):
    the products of every weight matrix, over the batch, once per inference step plus the
    feed-forward start and the read-out; BP's forward and backward count as three passes."""
    per_pass = cfg.data.batch_size * sum(o * i for o, i in layer_shapes(cfg))
    passes = 3 if cfg.dynamics.method == "bp" else 2 * cfg.integrator.n_steps + 2
    return per_pass * passes


def trace_shape(cfg: Config) -> tuple[int, int, int, int]:
    """(record steps, layers, samples, units) of the traces."""
    rec = cfg.record
    count = lambda sel, n: n if sel == "all" else len(sel)
    return (n_record_slots(cfg.integrator.n_steps, rec.every),
            count(rec.layers, cfg.n_hidden), count(rec.samples, cfg.data.batch_size),
            count(rec.units, cfg.network.width))


def record_slot_bytes(pops: int, hidden: int, replicas: int, batch: int, width: int,
                      input_dim: int, output_dim: int, itemsize: int) -> int:
    """Bytes one record slot takes while staged and summarised: the state (``pops``
    populations) and its residuals, rates, credit and products (5 states), and the weight
    read-out, its difference from BP and the W_1 operand (3 sets of weights)."""
    state = hidden * replicas * batch * width
    weights = replicas * (width * input_dim + (hidden - 1) * width * width + output_dim * width)
    return itemsize * ((pops + 5) * state + 3 * weights + 2 * replicas * batch * output_dim)


def trace_bytes(cfg: Config) -> int:
    t, l, s, u = trace_shape(cfg)
    return t * l * s * u * len(cfg.record.variables) * _itemsize(cfg)


def series_per_slot(cfg: Config) -> int:
    """Values of the per-layer summaries at one record step: energy and loss, the four
    per-layer norms, BP cosine and relative error of every weight matrix."""
    return (len(SERIES_SCALAR) + len(SERIES_LAYER) * cfg.n_hidden
            + len(SERIES_WEIGHT) * cfg.network.depth)


def series_bytes(cfg: Config) -> float:
    """Bytes of the per-layer summaries over time (what the file holds, as trace_bytes)."""
    slots = _float(n_record_slots(cfg.integrator.n_steps, cfg.record.every))
    return slots * series_per_slot(cfg) * _itemsize(cfg)


def record_bytes(cfg: Config) -> float:
    """Bytes of everything recorded over time (traces and series) of one run."""
    return _float(trace_bytes(cfg)) + series_bytes(cfg)


def streams(cfg: Config) -> bool:
    """Whether a run streams its records to its output file (``record.stream_mb``): torch
    backend only (Brian2 records through its own monitors, in memory)."""
    return cfg.backend == "torch" and record_bytes(cfg) > cfg.record.stream_mb * MB


def check_trace_size(cfg: Config) -> None:
    """``record.max_mb``: what the file will hold over time (the traces, and the per-layer
    series) must stay below it. In memory or streamed to disk, a run of 1e12 steps is refused
    here, before it starts."""
    itemsize = _itemsize(cfg)
    mb = _float(trace_bytes(cfg)) / MB
    if mb > cfg.record.max_mb:
        t, l, s, u = trace_shape(cfg)
        raise ConfigError(
            f"record: the traces would take {_size(mb * MB)} ({t:,} times x {l} layers x {s} "
            f"samples x {u} units x {len(cfg.record.variables)} variables x {itemsize} bytes), "
            f"above record.max_mb = {cfg.record.max_mb:g}. Shrink it: record.every (now "
            f"{cfg.record.every}), a subset in record.layers / record.samples / record.units, "
            f"fewer record.variables, or raise record.max_mb.")
    series = series_bytes(cfg)
    if series / MB > cfg.record.max_mb:
        raise ConfigError(
            f"record: the per-layer series would take {_size(series)} "
            f"({trace_shape(cfg)[0]:,} times x (energy, loss, 4 norms x {cfg.n_hidden} layers, "
            f"2 alignments x {cfg.network.depth} weights) x {itemsize} bytes), above "
            f"record.max_mb = {cfg.record.max_mb:g}. Shrink it: raise record.every (now "
            f"{cfg.record.every}), lower integrator.steps, or raise record.max_mb.")


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    shrink: str          # what makes it smaller (names the config keys)


def training_counts(cfg: Config, n_train: int) -> tuple[int, int, int, int]:
    """(updates per epoch, updates U, evaluations E, checkpoints C) of a training run over
    ``n_train`` examples, by arithmetic (as ctpc.training.setup and .loop count them)."""
    t, b = cfg.training, cfg.data.batch_size
    per_epoch = n_train // b if cfg.data.drop_last else -(-n_train // b)
    total = t.epochs * per_epoch
    if t.max_updates is not None:
        total = min(total, t.max_updates)
    evals = 2 + min(t.epochs, total) + (total // t.eval_every if t.eval_every else 0)
    checkpoints = total // t.checkpoint_every if t.checkpoint_every else 0
    return per_epoch, total, evals, checkpoints


def training_terms(cfg: Config, n_train: int, n_test: int) -> list[Term]:
    """The memory terms a training run adds (see the module's table)."""
    net, s = cfg.network, _itemsize(cfg)
    H, L = net.depth - 1, net.depth
    per_epoch, U, E, C = training_counts(cfg, n_train)
    t = cfg.training
    updates = (f"lower training.epochs (now {t.epochs:,}, {per_epoch:,} updates each) or set "
               f"training.max_updates")
    n = n_train + n_test
    return [
        Term("training history", 4 * U * (4 + 3 * H) * s, f"{updates} (this run makes "
             f"{U:,} updates)"),
        Term("evaluation history", E * (1536 + 16 * (7 + 2 * L)),
             f"{updates}, or raise training.eval_every (now {_yaml(t.eval_every)}): this run "
             f"evaluates {E:,} times, at each epoch's end and every eval_every updates"),
        Term("training schedule", 80 * (E + C),
             f"raise training.checkpoint_every (now {_yaml(t.checkpoint_every)}) or "
             f"training.eval_every, or {updates}"),
        Term("training data", n * (net.input_dim + net.output_dim) * (8 + s) + 16 * n,
             "use data.train_subset / data.test_subset"),
    ]


def _yaml(value) -> str:
    return "null" if value is None else f"{value:,}"


def estimate(cfg: Config, splits: tuple[int, int] | None = None) -> list[Term]:
    """The memory terms of a resolved config (input/output sizes known), biggest first. With
    ``splits`` (the train and test examples) a config with a ``training:`` section is
    estimated as the training run it describes (:func:`training_terms` added)."""
    net, s = cfg.network, _itemsize(cfg)
    N, L, D, O = net.width, net.depth, net.input_dim, net.output_dim
    H, B = L - 1, cfg.data.batch_size
    W = N * D + (L - 2) * N * N + O * N
    P = 3 if cfg.dynamics.tau_e > 0 else 2
    state = P * state_bytes(cfg)
    slots = _float(n_record_slots(cfg.integrator.n_steps, cfg.record.every) + 1)
    _, n_l, n_s, n_u = trace_shape(cfg)
    traces = slots * n_l * n_s * n_u * len(cfg.record.variables) * s
    series = slots * series_per_slot(cfg) * s
    if streams(cfg):   # one chunk in memory (device buffers and its host copy), the rest on disk
        traces, series = (min(t, RECORD_CHUNK_BYTES) for t in (traces, series))
    stages = SCHEMES[cfg.integrator.scheme].stages
    # Name the keys of the biggest block of weights: the hidden N x N matrices, or W_1 (N x D)
    # or W_L (O x N) when the data's input or output size dominates.
    blocks = {"network.width or network.depth": (L - 2) * N * N,
              "network.input_dim or network.width": N * D,
              "network.output_dim or network.width": O * N}
    size = f"lower {max(blocks, key=blocks.get)}"
    every = f"raise record.every (now {cfg.record.every})"
    terms = [
        Term("weights", W * (8 + 4 * s), size),
        Term("BP reference", 2 * W * s + 4 * H * B * N * s, f"{size}, or data.batch_size"),
        Term("state", state, "lower data.batch_size, network.width or network.depth"),
        Term("solver temporaries", (stages + 3) * state,
             f"lower data.batch_size, network.width or network.depth, or pick a scheme with "
             f"fewer stages than {cfg.integrator.scheme!r}"),
        Term("record traces", 3 * traces,
             f"{every}, record a subset (record.layers / samples / units) or fewer "
             f"record.variables; the traces alone must also fit record.max_mb "
             f"({cfg.record.max_mb:g} MB)"),
        Term("record series", 3 * series,
             f"{every}, or lower integrator.steps or network.depth"),
        Term("record chunk", min(RECORD_CHUNK_BYTES, slots * record_slot_bytes(
            P, H, 1, B, N, D, O, s)), f"{every}, or lower data.batch_size, network.width or "
            "network.depth"),
        Term("divergence-check buffer", cfg.integrator.check_every * s,
             f"lower integrator.check_every (now {cfg.integrator.check_every})"),
        Term("batch", 2 * B * (D + O) * 8, "lower data.batch_size or network.input_dim"),
    ]
    if cfg.backend == "brian2":
        b2 = 12 * H * B * N * 8
        if cfg.brian2.construction == "synapses":
            b2 += 48 * B * W
        if cfg.brian2.target == "cpp_standalone":
            b2 += (slots - 1) * P * H * B * N * 8
        terms.append(Term("Brian2 objects", b2,
                          "set brian2.construction: network_operation (no copy of the weights "
                          "per sample) or lower data.batch_size"))
    if splits is not None and cfg.training is not None:
        terms += training_terms(cfg, *splits)
    return sorted(terms, key=lambda t: -t.bytes)


def _float(n: int) -> float:
    """An exact int as a float; beyond float range (a run of 1e400 steps): inf."""
    try:
        return float(n)
    except OverflowError:
        return math.inf


def check_memory(cfg: Config, splits: tuple[int, int] | None = None) -> None:
    """Refuse (ConfigError, exit 2) a run whose estimate exceeds the limit, naming the biggest
    term, the estimate and what to shrink. ``splits``: see :func:`estimate`."""
    terms = estimate(cfg, splits)
    total, limit = sum(_float(t.bytes) if isinstance(t.bytes, int) else t.bytes
                       for t in terms), limit_bytes(cfg)
    if total <= limit:
        return
    big = terms[0]
    if cfg.memory_limit_gb is not None:
        where = f"memory_limit_gb = {cfg.memory_limit_gb:g}"
    else:
        where = (f"memory_limit_gb, by default half of this machine's "
                 f"{_size(physical_memory())} of memory")
    others = ", ".join(f"{t.name} {_size(t.bytes)}" for t in terms[1:4])
    raise ConfigError(
        f"memory: this run would need about {_size(total)}, above the limit of {_size(limit)} "
        f"({where}). The biggest term is the {big.name}: {_size(big.bytes)}; to shrink it, "
        f"{big.shrink}. Or raise memory_limit_gb if the machine has the memory. "
        f"(Next: {others}.)")


def _size(n: float) -> str:
    n = _float(n) if isinstance(n, int) else n
    if not math.isfinite(n):
        return "more than any machine has"
    for unit, scale in (("TB", 2 ** 40), ("GB", GB), ("MB", MB), ("kB", 2 ** 10), ("bytes", 1)):
        if n >= scale or unit == "bytes":
            value = n / scale
            return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    raise AssertionError("unreachable")
