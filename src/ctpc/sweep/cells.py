"""The sweep specification -> a validated grid of cells.

``sweep:`` maps config key paths to lists of values; the sweep runs their Cartesian product and
each key becomes one dimension of the combined dataset. Several keys can be *linked* into one
dimension by naming them together, comma-separated, with one list of values per entry:

    sweep:
      dynamics.method: [pc, pcalm]                       # a dimension of 2
      network.depth, integrator.steps: [[8, 32], [16, 64], [32, 128]]   # one dimension of 3

The first key of a linked group names the dimension; the others become coordinates along it
(here ``integrator.steps`` along ``network.depth``: a budget that grows with depth). Every cell's
config is validated before anything runs; an invalid value is a ConfigError naming the key.
"""
from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctpc.common.errors import InputError
from ctpc.config.schema import ConfigError
from ctpc.config.identity import cell_key
from ctpc.build.resolve import Resolved, load_config
from ctpc.sweep.cluster import check_cell

# Keys a sweep cannot vary: they name the sweep itself or its output.
FORBIDDEN_KEYS = ("sweep", "output", "name")
# Config keys that hold paths: made absolute so workers started elsewhere find the same file.
PATH_KEYS = (("data", "path"), ("network", "weights"))
SCALAR_TYPES = (str, int, float, bool)


@dataclass(frozen=True)
class Axis:
    """One dimension of the sweep: its name, the keys it sets and one value tuple per entry."""
    dim: str
    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]

    def coord(self, key: str) -> list:
        i = self.keys.index(key)
        return [v[i] for v in self.values]

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Cell:
    index: tuple[int, ...]           # position along each axis
    overrides: dict[str, Any]        # key path -> value for this cell
    config: Resolved                 # the validated, resolved config (immutable)
    key: str                         # content hash of the config: names the cell's cache file

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides.items())


def parse_axes(spec: dict[str, list] | None) -> list[Axis]:
    """Check the ``sweep:`` mapping and turn it into axes (see the module docstring)."""
    if not spec:
        raise ConfigError("sweep: the config has no 'sweep:' section (or it is empty); add e.g. "
                          "sweep: {integrator.dt: [0.5, 1.0]} or use python -m ctpc.simulate "
                          "for a single run")
    axes, seen = [], {}                 # key -> how its entry is written
    for name, values, path in _entries(spec):
        keys = tuple(k.strip() for k in str(name).split(","))
        where = f"sweep.{name}"
        spelling = _spelling(path, values)
        for n, key in enumerate(keys):
            if not key or any(not part for part in key.split(".")):
                raise ConfigError(f"{where}: empty key path; expected e.g. integrator.dt")
            if key.split(".")[0] in FORBIDDEN_KEYS:
                raise ConfigError(f"{where}: {key!r} cannot be swept (it names the sweep or its "
                                  "output); sweep model keys such as integrator.dt")
            if key in keys[:n]:
                raise ConfigError(f"{where}: key {key!r} is listed twice in this linked group; "
                                  "list it once")
            for other, first in seen.items():
                if other == key:
                    raise ConfigError(
                        f"sweep: {key} is given twice, as {first!r} and as {spelling!r}; give "
                        "its values once, in one of them")
                if other.startswith(key + ".") or key.startswith(other + "."):
                    inner, outer = (other, key) if len(other) > len(key) else (key, other)
                    raise ConfigError(
                        f"sweep: {outer} and {inner} overlap ({inner} is inside {outer}), "
                        f"given as {first!r} and as {spelling!r}; sweep {inner} only")
        seen.update((key, spelling) for key in keys)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: expected a non-empty list of values, got {values!r}")
        rows = []
        for v in values:
            row = tuple(v) if len(keys) > 1 and isinstance(v, (list, tuple)) else (v,)
            if len(row) != len(keys):
                raise ConfigError(f"{where}: each entry must give {len(keys)} values "
                                  f"(one per key: {', '.join(keys)}), got {v!r}")
            for x in row:
                if not isinstance(x, SCALAR_TYPES):
                    raise ConfigError(f"{where}: values must be numbers, strings or booleans "
                                      f"(they become coordinates), got {x!r}")
            rows.append(row)
        firsts = [r[0] for r in rows]
        if len(set(map(repr, firsts))) != len(firsts):
            raise ConfigError(f"{where}: duplicate values of {keys[0]} in {firsts}; each value "
                              "labels one position of the dimension")
        axes.append(Axis(keys[0], keys, tuple(rows)))
    return axes


def _entries(spec: dict, path: tuple[str, ...] = ()) -> list[tuple[str, Any, tuple]]:
    """(dotted name, values, path of YAML keys) of each entry. Nested sections are dotted
    keys: ``--set sweep.integrator.dt=[0.5,1]`` arrives as {"integrator": {"dt": [...]}} and
    means the same as {"integrator.dt": [...]}. A key written both ways is kept twice (a dict
    of names kept the last without a word), for :func:`parse_axes` to refuse."""
    out = []
    for key, value in spec.items():
        if isinstance(value, dict):
            out += _entries(value, path + (str(key),))
        else:
            out.append((".".join(path + (str(key),)), value, path + (str(key),)))
    return out


def _spelling(path: tuple[str, ...], values: Any) -> str:
    """How an entry is written in the sweep section: ``integrator.dt: [0.5, 1.0]`` or
    ``integrator: {dt: [0.25]}`` (long values shortened)."""
    text = repr(values)
    text = f"{path[-1]}: {text if len(text) <= 40 else text[:37] + '...'}"
    for part in reversed(path[:-1]):
        text = f"{part}: {{{text}}}"
    return text


def _absolute_paths(raw: dict) -> dict:
    for section, key in PATH_KEYS:
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str) and value.startswith("~"):     # as the schema does
            value = raw[section][key] = os.path.expanduser(value)   # (unexpandable: refused)
        if value is not None and not Path(value).is_absolute() and \
                not str(value).startswith("~"):
            raw[section][key] = str(Path(value).resolve())
    return raw


# What identifies a cell (NOT_HASHED, cell_key, input_digests) is ctpc.config.identity, shared with
# training's --resume.


def expand(base: dict, axes: list[Axis]) -> list[Cell]:
    """All cells of the product, each validated and resolved (ConfigError names the cell)."""
    base = _absolute_paths(copy.deepcopy({k: v for k, v in base.items() if k != "sweep"}))
    cells, digests = [], {}
    for index in itertools.product(*(range(len(a)) for a in axes)):
        overrides = {k: v for a, i in zip(axes, index) for k, v in zip(a.keys, a.values[i])}
        label = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        try:
            cfg = load_config(base, overrides)
            # what the cell's task would refuse before computing (the machine: plan_sweep)
            check_cell(cfg, machine=False)
        except InputError as exc:
            raise ConfigError(f"sweep cell ({label}): {exc}") from None
        digests.update(cfg.found.digests)      # the files as resolving read them
        cells.append(Cell(index, overrides, cfg, cell_key(cfg, digests)))
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("sweep: some cells have identical configurations (the same value "
                          "written twice, e.g. 1 and 1.0 for a float key); remove the duplicate")
    return cells
