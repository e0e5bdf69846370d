"""The identity of a run: one hash of everything that determines its results.

Used by the sweep (:func:`cell_key`, the name ``OUT.cells/<key>.nc`` of a cell's file) and by
training's ``--resume`` (:func:`run_key`, stored in the checkpoint). Both are
:func:`config_key`: the resolved config without the keys that do not change what is computed
(:data:`NOT_HASHED`: labels, the output, the sweep itself, the memory limit, which only decides
whether a run may start), plus the SHA-256 of every input file the config names. A resumed
training run also leaves out what a resumed run may change (:data:`RESUME_MAY_CHANGE`): its
length -- continuing a run for more epochs is the same run, whose first updates are those
already done -- and how often it saves checkpoints, which never changes what it computes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ctpc.config.schema import Config, ConfigError

# Keys that do not change what a run computes: left out of its hash. (memory_limit_gb only
# decides whether a run may start.)
NOT_HASHED = ("name", "description", "output", "sweep", "memory_limit_gb")
# Keys added after runs were first keyed, hashed only when set to other than this value, so
# that every run and sweep cell keyed before keeps its key.
ADDED_KEYS = {"network.bias": False, "dynamics.noise": {"h": 0.0, "e": 0.0, "lambda": 0.0},
              "dynamics.delay": 0.0, "brian2.errors": "rate", "brian2.r_max": 1000.0,
              "brian2.e_max": 1.0}
# The length of a training run: a run extended with --resume keeps its identity.
RUN_LENGTH = ("training.epochs", "training.max_updates")
# What --resume may change: the length, and when checkpoints are saved (bit-identical results).
RESUME_MAY_CHANGE = (*RUN_LENGTH, "training.checkpoint_every")
# A data.path directory (data.source: idx) is hashed over its MNIST-format files of both splits
# (train-*, t10k-*): a run may read the other split too (e.g. for normalisation).
IDX_FILE_PREFIXES = ("train-", "t10k-")


def config_key(cfg: Config, cache: dict | None = None, *, leave_out: tuple[str, ...] = ()) -> str:
    """Hash of everything that determines the run (not :data:`NOT_HASHED`, nor the dotted keys
    in ``leave_out``): the config, and the content of every input file it names
    (:func:`input_digests`), so a data or weights file rewritten at the same path gives a new
    key."""
    d = cfg.to_dict()
    for k in NOT_HASHED:
        d.pop(k, None)
    leave_out = (*leave_out, *(k for k, unset in ADDED_KEYS.items() if _get(d, k) == unset))
    for dotted in leave_out:
        parent, _, last = dotted.rpartition(".")
        node = _get(d, parent) if parent else d
        if isinstance(node, dict):
            node.pop(last, None)
    digests = input_digests(cfg, cache)
    if digests:      # configs without input files keep the keys they always had
        d["input_sha256"] = digests
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _get(d: dict, dotted: str):
    node = d
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def cell_key(cfg: Config, cache: dict | None = None) -> str:
    """The key of a sweep cell (:func:`config_key`)."""
    return config_key(cfg, cache)


def run_key(cfg: Config, cache: dict | None = None) -> str:
    """The identity a training checkpoint carries: :func:`cell_key` without the run length
    nor what a resumed run may change (:data:`RESUME_MAY_CHANGE`), so ``--resume --set
    training.epochs=N`` extends the run and ``training.checkpoint_every`` may differ."""
    return config_key(cfg, cache, leave_out=RESUME_MAY_CHANGE)


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
    stamp = digest_stamp(files)
    if stamp not in cache:
        h = hashlib.sha256()
        for p in files:
            try:
                with open(p, "rb") as f:
                    hash_file(h, p, f)
            except OSError as exc:
                raise ConfigError(f"{key}: cannot read {str(p)!r} ({exc.strerror})") from None
        cache[stamp] = h.hexdigest()
    return cache[stamp]


def digest_stamp(files) -> tuple[str, ...]:
    """The key of ``files`` in a digest ``cache`` (:func:`input_digests`)."""
    return tuple(str(Path(p).resolve()) for p in files)


def hash_file(h, path: Path, f) -> None:
    """Feed one input file into the digest ``h`` as :func:`input_digests` hashes it: its name,
    then the bytes of ``f`` (the file, open in binary mode, read from its start; its position
    is left at the start again). A reader that hashes the file it reads (the weights file, an
    .npz data set) seeds a digest cache with it, so that the file is read once per run."""
    h.update(Path(path).name.encode() + b"\0")
    f.seek(0)
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    f.seek(0)
    h.update(b"\0")
