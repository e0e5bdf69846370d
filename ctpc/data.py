"""Input batches: the embedded digits set, synthetic data, user .npz files and MNIST-style IDX.

A run sees one batch (the paper resets h and lambda for every batch, so one batch is the unit of
inference). Batches are float64 numpy arrays ``x [B, D]`` and one-hot ``y [B, O]``; the backend
casts them to its dtype/device.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from .config import ConfigError, DataConfig, NetworkConfig

IDX_PREFIX = {"train": "train", "test": "t10k"}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DIGITS_CLASSES = 10


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


# ------------------------------------------------------------------------------ IDX files
def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find_idx(directory: Path, split: str, kind: str) -> Path:
    ndim = 3 if kind == "images" else 1
    prefix = IDX_PREFIX[split]
    hits = sorted(p for p in directory.glob(f"{prefix}-{kind}*idx{ndim}-ubyte*")
                  if p.suffix in (".gz", "") or p.name.endswith("ubyte"))
    if not hits:
        raise ConfigError(
            f"data.path {str(directory)!r}: no {prefix}-{kind}-idx{ndim}-ubyte[.gz] file found; "
            "point data.path at a directory holding MNIST-format IDX files "
            "(e.g. train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz)")
    return hits[0]


def _idx_header(path: Path) -> tuple[int, ...]:
    with _open(path) as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
            raise ConfigError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
        ndim = head[3]
        return struct.unpack(f">{ndim}I", f.read(4 * ndim))


def read_idx(path: Path) -> np.ndarray:
    shape = _idx_header(path)
    with _open(path) as f:
        f.seek(4 + 4 * len(shape))
        buf = f.read()
    if len(buf) != int(np.prod(shape)):
        raise ConfigError(f"{path}: truncated IDX file ({len(buf)} bytes, header says {shape})")
    return np.frombuffer(buf, dtype=np.uint8).reshape(shape)


# ------------------------------------------------------------------------------ sources
def _check_dir(cfg: DataConfig) -> Path:
    path = Path(cfg.path)
    if not path.is_dir():
        raise ConfigError(f"data.path {str(path)!r} is not a directory; for data.source: idx it "
                          "must be the directory holding the IDX files")
    return path


def _check_npz(cfg: DataConfig):
    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError(f"data.path {str(path)!r} does not exist (data.source: npz expects a "
                          ".npz file with arrays x [n, D] and y [n, O])")
    try:
        arrays = np.load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
        raise ConfigError(f"data.path {str(path)!r}: cannot read as .npz ({exc})") from None
    missing = {"x", "y"} - set(arrays.files)
    if missing:
        raise ConfigError(f"data.path {str(path)!r}: missing array(s) {sorted(missing)}; "
                          f"found {arrays.files}, expected x [n, D] and y [n, O]")
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ConfigError(f"data.path {str(path)!r}: expected x [n, D] and y [n, O] with the same "
                          f"n; got x {x.shape}, y {y.shape}")
    return x, y


def describe(cfg: DataConfig, net: NetworkConfig, seed: int):
    """(input_dim, output_dim, number of examples) without loading more than needed."""
    if cfg.source == "digits":
        return 64, DIGITS_CLASSES, 1797
    if cfg.source == "synthetic":
        return None, None, None
    if cfg.source == "npz":
        x, y = _check_npz(cfg)
        return x.shape[1], y.shape[1], len(x)
    directory = _check_dir(cfg)
    images = _idx_header(_find_idx(directory, cfg.split, "images"))
    labels = _idx_header(_find_idx(directory, cfg.split, "labels"))
    if images[0] != labels[0]:
        raise ConfigError(f"data.path {str(directory)!r}: {images[0]} images but {labels[0]} labels")
    return int(np.prod(images[1:])), 10, images[0]


def _select(n: int, cfg: DataConfig, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n) if cfg.shuffle else np.arange(n)
    return order[cfg.offset:cfg.offset + cfg.batch_size]


def _standardise(x: np.ndarray, cfg: DataConfig, mean: float, std: float) -> np.ndarray:
    mean = mean if cfg.mean is None else cfg.mean
    std = std if cfg.std is None else cfg.std
    return (x - mean) / std


def load_batch(cfg: DataConfig, net: NetworkConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's batch: float64 ``x [B, D]``, ``y [B, O]``."""
    if cfg.source == "synthetic":
        # Streams separate from the weights' and from each other, so example i is the same
        # whatever the batch size.
        x = np.random.default_rng([seed, 1]).standard_normal((cfg.batch_size, net.input_dim))
        labels = np.random.default_rng([seed, 2]).integers(0, net.output_dim, cfg.batch_size)
        return x, one_hot(labels, net.output_dim)
    if cfg.source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = digits.data / 16.0  # 0..16 grey levels -> [0, 1], like MNIST's /255
        idx = _select(len(pixels), cfg, seed)
        x = _standardise(pixels[idx], cfg, pixels.mean(), pixels.std())
        return x, one_hot(digits.target[idx], DIGITS_CLASSES)
    if cfg.source == "npz":
        x, y = _check_npz(cfg)
        idx = _select(len(x), cfg, seed)
        x = np.asarray(x[idx], dtype=np.float64)
        if cfg.mean is not None or cfg.std is not None:
            x = _standardise(x, cfg, 0.0, 1.0)
        return x, np.asarray(y[idx], dtype=np.float64)
    directory = _check_dir(cfg)
    images = read_idx(_find_idx(directory, cfg.split, "images"))
    labels = read_idx(_find_idx(directory, cfg.split, "labels"))
    idx = _select(len(images), cfg, seed)
    x = images[idx].reshape(len(idx), -1) / 255.0
    return _standardise(x, cfg, MNIST_MEAN, MNIST_STD), one_hot(labels[idx].astype(int), 10)


# TEMPORARY placeholder until the data branch lands (splits for every source).
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class DataSplit:
    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray


def load_split(cfg: DataConfig, net: NetworkConfig, split: str) -> DataSplit:
    from sklearn.datasets import load_digits
    digits = load_digits()
    pixels = digits.data / 16.0
    x = (pixels - pixels.mean()) / pixels.std()
    idx = np.arange(len(x))
    idx = idx[idx % 5 != 0] if split == "train" else idx[idx % 5 == 0]
    sub = cfg.train_subset if split == "train" else cfg.test_subset
    if sub:
        idx = idx[:sub]
    return DataSplit(x[idx], one_hot(digits.target[idx], 10), digits.target[idx])
