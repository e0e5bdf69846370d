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
"""
from __future__ import annotations

import math
from collections import defaultdict

from ..config import Config
from ..model import shape_key
from ..training.setup import training_key
from .grid import Cell

MAX_GROUP = 16     # replicas per program; beyond this the kernels are big enough on their own


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


def group_cells(cells: list[Cell], *, workers: int = 1, max_size: int = MAX_GROUP,
                enabled: bool = True) -> list[list[Cell]]:
    """Cells in groups that run as one program each. Groups are at most ``max_size`` cells and
    split evenly so that there are at least ``workers`` tasks when the cells allow it (keeping
    every worker busy beats bigger groups on a small machine)."""
    if not enabled:
        return [[c] for c in cells]
    by_key: dict = defaultdict(list)
    singles = []
    for c in cells:
        key = replica_key(c.config)
        (singles.append([c]) if key is None else by_key[key].append(c))
    groups = []
    for members in by_key.values():
        parts = math.ceil(len(members) / max_size)
        groups += [members[i::parts] for i in range(parts)]
    groups = sorted(groups, key=len, reverse=True)
    while len(groups) + len(singles) < workers and len(groups[0]) > 1:
        big = groups.pop(0)
        groups += [big[0::2], big[1::2]]
        groups.sort(key=len, reverse=True)
    return groups + singles
