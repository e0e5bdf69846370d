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
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..loading import load_config
from ..memory import MB, record_bytes, streams

# Keys a sweep cannot vary: they name the sweep itself or its output.
FORBIDDEN_KEYS = ("sweep", "output", "name")
# Config keys that hold paths: made absolute so workers started elsewhere find the same file.
PATH_KEYS = (("data", "path"), ("network", "weights"))
# A data.path directory (data.source: idx) is hashed over its MNIST-format files of both splits
# (train-*, t10k-*): a run may read the other split too (e.g. for normalisation).
IDX_FILE_PREFIXES = ("train-", "t10k-")
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
    config: Config                   # the validated, resolved config
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
    axes, seen = [], set()
    for name, values in _flatten(spec).items():
        keys = tuple(k.strip() for k in str(name).split(","))
        where = f"sweep.{name}"
        for key in keys:
            if not key or any(not part for part in key.split(".")):
                raise ConfigError(f"{where}: empty key path; expected e.g. integrator.dt")
            if key.split(".")[0] in FORBIDDEN_KEYS:
                raise ConfigError(f"{where}: {key!r} cannot be swept (it names the sweep or its "
                                  "output); sweep model keys such as integrator.dt")
            if key in seen:
                raise ConfigError(f"{where}: key {key!r} is swept twice; list it once")
            seen.add(key)
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


def _flatten(spec: dict, prefix: str = "") -> dict:
    """Nested sections -> dotted keys: ``--set sweep.integrator.dt=[0.5,1]`` arrives as
    {"integrator": {"dt": [...]}} and means the same as {"integrator.dt": [...]}."""
    flat = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _absolute_paths(raw: dict) -> dict:
    for section, key in PATH_KEYS:
        value = (raw.get(section) or {}).get(key)
        if value is not None and not Path(value).is_absolute():
            raw[section][key] = str(Path(value).resolve())
    return raw


# Keys that do not change what a cell computes: left out of its hash. (memory_limit_gb only
# decides whether a run may start.)
NOT_HASHED = ("name", "description", "output", "sweep", "memory_limit_gb")


def cell_key(cfg: Config, cache: dict | None = None) -> str:
    """Hash of everything that determines the run (not its name/description/output): the
    config, and the content of every input file it names (:func:`input_digests`), so a data or
    weights file rewritten at the same path gives new keys and the cells run again."""
    d = cfg.to_dict()
    for k in NOT_HASHED:
        d.pop(k, None)
    digests = input_digests(cfg, cache)
    if digests:      # configs without input files keep the keys they always had
        d["input_sha256"] = digests
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def input_digests(cfg: Config, cache: dict | None = None) -> dict[str, str]:
    """SHA-256 of each input file the config names: ``network.weights``, and ``data.path`` (an
    .npz file; for ``data.source: idx`` the directory's IDX files, names and bytes; see
    IDX_FILE_PREFIXES). ``cache``: digests already computed, by file list (one plan's cells
    share their files; a new plan reads them again, so a file rewritten in between is seen)."""
    cache = {} if cache is None else cache
    out = {}
    if cfg.data.path is not None:
        path = Path(cfg.data.path)
        if path.is_dir():
            files = tuple(sorted(p for p in path.iterdir()
                                 if p.name.startswith(IDX_FILE_PREFIXES) and p.is_file()))
        else:
            files = (path,)
        out["data.path"] = _digest(files, cache, "data.path")
    if cfg.network.weights is not None:
        out["network.weights"] = _digest((Path(cfg.network.weights),), cache, "network.weights")
    return out


def _digest(files: tuple[Path, ...], cache: dict, key: str) -> str:
    """SHA-256 over the files' names and bytes."""
    stamp = tuple(str(p.resolve()) for p in files)
    if stamp not in cache:
        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode() + b"\0")
            try:
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as exc:
                raise ConfigError(f"{key}: cannot read {str(p)!r} ({exc.strerror})") from None
            h.update(b"\0")
        cache[stamp] = h.hexdigest()
    return cache[stamp]


def expand(base: dict, axes: list[Axis]) -> list[Cell]:
    """All cells of the product, each validated and resolved (ConfigError names the cell)."""
    base = _absolute_paths(copy.deepcopy({k: v for k, v in base.items() if k != "sweep"}))
    cells, digests = [], {}
    for index in itertools.product(*(range(len(a)) for a in axes)):
        overrides = {k: v for a, i in zip(axes, index) for k, v in zip(a.keys, a.values[i])}
        label = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        try:
            cfg = load_config(base, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep cell ({label}): {exc}") from None
        if cfg.training is None and streams(cfg):
            raise ConfigError(
                f"sweep cell ({label}): record: the cell records {record_bytes(cfg) / MB:.3g} "
                f"MB, above record.stream_mb = {cfg.record.stream_mb:g}; sweep cells keep their "
                "records in memory. Record less (record.every, record.samples, "
                "record.variables) or raise record.stream_mb")
        cells.append(Cell(index, overrides, cfg, cell_key(cfg, digests)))
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("sweep: some cells have identical configurations (the same value "
                          "written twice, e.g. 1 and 1.0 for a float key); remove the duplicate")
    return cells
