"""Grouping sweep cells into replica programs.

Cells that share everything that fixes tensor shapes and control flow (depth, width, input and
output sizes, activation, batch, dtype, device, scheme, error-neuron mode, run length, record
plan; for training also the data, optimiser and schedule) run as R replicas of ONE tensor
program: one task, one set of kernels for all of them. They may differ in seed (weights, data
order), weights file, data batch, method (PC is PC-ALM with alpha = 0), rho, state_lr/tau_h,
alpha/tau_lambda, tau_e > 0 and dt. Each cell still gets its own file, equal to a separate run
to round-off (tests/test_replicas.py).

BP and Brian2 cells never share a program with PC/PC-ALM ones: BP replicas form their own
groups (one batched autograd program); a Brian2 cell is always a group of one.

**How big a group is on the CPU.** Replicas remove per-operator overhead, but they also make
every tensor R times larger, and the whole digits grid, run grouped and cell by cell on 2 cores
(docs/benchmarks.md, "Grouped sweeps"), shows where that pays:

* grouping won (1.2-2.3x less compute) only for cells whose replica holds at most ~64 KiB of
  state (one population, H x B x N): there a step is bound by per-operator overhead;
* from ~124 KiB per replica on, groups of 3 or 6 cost 10-30 % *more* than the same cells run
  one by one, whatever the group's total size: the step is bound by arithmetic and memory
  traffic, which replicas do not share, and larger tensors fall out of the core's caches
  (at N = 32, L = 64, B = 64, six replicas cost 88 ms per replica per presentation against
  52 ms alone);
* every winning group held at most ~372 KiB of state.

So on the CPU a cell whose replica holds more than :data:`REPLICA_FRACTION` of the per-core L2
(64 KiB of 1 MiB) runs alone, and a group holds at most :data:`CACHE_FRACTION` of it (384 KiB).
The L2 size is read from Linux's sysfs (1 MiB assumed elsewhere). On a GPU a group is one
launch per operator whatever its size, and only ``max_size`` applies.

Groups are handed out largest estimated work first (:func:`ctpc.results.memory.presentation_work`), so
that the longest group does not start last and leave the other workers idle at the end.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ctpc.config.schema import Config
from ctpc.results.memory import presentation_work, state_bytes
from ctpc.build.objects import device_kind, shape_key
from ctpc.training.setup import training_key
from ctpc.sweep.cells import Cell

MAX_GROUP = 16     # replicas per program; beyond this the kernels are big enough on their own
# Fractions of the per-core L2 (measured on the whole digits grid; see the module text):
REPLICA_FRACTION = 1 / 16   # above this much state, a replica's step is not overhead-bound
CACHE_FRACTION = 3 / 8      # the most state a CPU group holds
DEFAULT_L2_BYTES = 1 << 20


def replica_key(cfg: Config) -> tuple | None:
    """Configs with equal keys can run as replicas of one program; None: never grouped."""
    if cfg.backend != "torch":
        return None
    base = shape_key(cfg) + (cfg.device,)
    if cfg.training is not None:
        return ("train",) + base + training_key(cfg)
    it, rec = cfg.integrator, cfg.record
    return ("simulate",) + base + (
        it.scheme, it.n_steps, it.inner_steps, it.weight_credit_timing, it.check_every,
        it.divergence_bound, it.growth_bound, it.compile, rec.every, tuple(rec.variables),
        repr(rec.layers), repr(rec.samples), repr(rec.units))


def _parse_size(text: str) -> int:
    """sysfs cache sizes: '1024K', '2M' or plain bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def l2_cache_bytes(sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The per-core L2 cache of this machine in bytes, from Linux's sysfs;
    :data:`DEFAULT_L2_BYTES` (1 MiB) where it cannot be read (other systems)."""
    for index in sorted(sysfs.glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                return _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
    return DEFAULT_L2_BYTES


def max_replicas(cfg: Config, max_size: int, l2_bytes: int) -> int:
    """The largest group of replicas of ``cfg``: ``max_size`` on a GPU; on the CPU (L2 of
    ``l2_bytes`` per core) one for a replica of more than REPLICA_FRACTION of the L2 of state,
    else as many as fit CACHE_FRACTION of it."""
    if device_kind(cfg.device) == "cuda":
        return max_size
    one = state_bytes(cfg)
    if one > REPLICA_FRACTION * l2_bytes:
        return 1
    return max(1, min(max_size, int(CACHE_FRACTION * l2_bytes) // one))


def group_work(group: list[Cell]) -> int:
    """Estimated work of a group, for ordering only: replicas x one presentation's
    multiply-adds x (for training) epochs."""
    cfg = group[0].config
    epochs = cfg.training.epochs if cfg.training is not None else 1
    return len(group) * presentation_work(cfg) * epochs


def group_cells(cells: list[Cell], *, workers: int = 1, max_size: int = MAX_GROUP,
                l2_bytes: int | None = None, enabled: bool = True) -> list[list[Cell]]:
    """Cells in groups that run as one program each, largest estimated work first.

    A group holds at most :func:`max_replicas` cells (``max_size``, and on the CPU what the
    per-core L2 of ``l2_bytes`` allows, default :func:`l2_cache_bytes`); a key with more cells
    is split evenly. Groups are split further, the biggest first, until there are at least
    ``workers`` tasks when the cells allow it (keeping every worker busy beats bigger groups on
    a small machine)."""
    if not enabled:
        return sorted(([c] for c in cells), key=group_work, reverse=True)
    l2 = l2_cache_bytes() if l2_bytes is None else l2_bytes
    by_key: dict = defaultdict(list)
    singles = []
    for c in cells:
        key = replica_key(c.config)
        (singles.append([c]) if key is None else by_key[key].append(c))
    groups = []
    for members in by_key.values():
        parts = math.ceil(len(members) / max_replicas(members[0].config, max_size, l2))
        groups += [members[i::parts] for i in range(parts)]
    while len(groups) + len(singles) < workers:
        splittable = [g for g in groups if len(g) > 1]
        if not splittable:
            break
        big = max(splittable, key=group_work)
        groups.remove(big)
        groups += [big[0::2], big[1::2]]
    return sorted(groups + singles, key=group_work, reverse=True)
