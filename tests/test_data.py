"""Data sources: embedded digits, synthetic, .npz and MNIST-format IDX (gz or raw)."""
import gzip
import struct

import numpy as np
import pytest

import ctpc
from ctpc.data import MNIST_MEAN, MNIST_STD, load_batch


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory(tmp_path, compress, small):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 4, 3))
    labels = rng.integers(0, 10, 20)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, compress)
    cfg = ctpc.load_config(small(
        network={"input_dim": None, "output_dim": None},
        data={"source": "idx", "path": str(tmp_path), "batch_size": 5, "shuffle": False}))
    assert (cfg.network.input_dim, cfg.network.output_dim) == (12, 10)
    x, y = load_batch(cfg.data, cfg.network, cfg.seed)
    expected = (images[:5].reshape(5, -1) / 255.0 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(x, expected)
    np.testing.assert_array_equal(y.argmax(1), labels[:5])
    assert ctpc.simulate(cfg).attrs["status"] == "ok"
    with pytest.raises(ctpc.ConfigError, match="t10k-images"):
        ctpc.load_config(small(network={"input_dim": None, "output_dim": None},
                               data={"source": "idx", "path": str(tmp_path), "split": "test"}))


def test_npz_source(tmp_path, small):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((10, 5)), np.eye(3)[rng.integers(0, 3, 10)]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = ctpc.load_config(small(network={"input_dim": None, "output_dim": None},
                                 data={"source": "npz", "path": str(tmp_path / "d.npz"),
                                       "shuffle": False, "offset": 2}))
    xb, yb = load_batch(cfg.data, cfg.network, cfg.seed)
    np.testing.assert_array_equal(xb, x[2:5])
    np.testing.assert_array_equal(yb, y[2:5])
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(ctpc.ConfigError, match=r"missing array\(s\) \['y'\]"):
        ctpc.load_config(small(data={"source": "npz", "path": str(tmp_path / "bad.npz")}))


def test_digits_default_is_normalised():
    cfg = ctpc.load_config({"integrator": {"steps": 1}, "data": {"batch_size": 1797}})
    assert (cfg.network.input_dim, cfg.network.output_dim) == (64, 10)
    x, y = load_batch(cfg.data, cfg.network, cfg.seed)
    assert abs(x.mean()) < 1e-9 and abs(x.std() - 1) < 1e-9
    assert np.all(y.sum(1) == 1)


def test_results_do_not_depend_on_batch_size(small):
    """Activity dynamics are per sample (spec 3, step-size note): sample 0's trajectory is the
    same whether it shares the batch with 1 or with 5 other samples."""
    a = ctpc.simulate(small(data={"batch_size": 2}, record={"samples": [0, 1]}))
    b = ctpc.simulate(small(data={"batch_size": 6}, record={"samples": [0, 1]}))
    np.testing.assert_allclose(a.h.values, b.h.values, rtol=0, atol=1e-13)
    np.testing.assert_allclose(a.lam.values, b.lam.values, rtol=0, atol=1e-13)
