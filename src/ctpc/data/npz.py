"""User ``.npz`` files, in one of two layouts:

* splits: ``x_train [n, D]``, ``y_train``, ``x_test [m, D]``, ``y_test``, where each y is one-hot
  ``[n, O]`` or integer class labels ``[n]``;
* one set: ``x [n, D]``, ``y`` (one-hot, integer labels, or real-valued targets ``[n, O]``, which
  simulate accepts but training does not). It is the train split; there is no test split.

Integer labels give ``O = max(largest label + 1, network.output_dim)`` classes.

Every array is checked when the file is first read (numeric dtype, shape, finite values, the
meaning of y, agreement between train and test); a problem is a ConfigError that names
``data.path``, the array and what is wrong. Files are read with ``allow_pickle=False``, opened
once (which also gives their digest, :func:`digest`) and cached until they change.
"""
from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ctpc.config.identity import hash_file
from ctpc.config.schema import ConfigError
from ctpc.data.raw import RawSplit

SPLIT_ARRAYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
SINGLE_ARRAYS = ("x", "y")
NUMERIC_KINDS = "biuf"            # bool, signed, unsigned, float
MAX_CLASSES = 1 << 16             # integer labels above this are ids, not classes
ZIP_MAGIC, NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"
LABELS, ONE_HOT, TARGETS = "integer labels", "one-hot", "real-valued targets"


@dataclass(frozen=True)
class _Set:
    """One validated (x, y) pair: x ``[n, D]``; y read as labels ``[n]`` or targets ``[n, O]``."""
    x: np.ndarray
    kind: str                    # LABELS, ONE_HOT or TARGETS
    labels: np.ndarray | None    # int64 [n] (LABELS, ONE_HOT)
    targets: np.ndarray | None   # float [n, O] (TARGETS)
    width: int | None            # O of a one-hot or target y; None for integer labels
    names: tuple[str, str]


def _error(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"data.path {str(path)!r}: {problem}")


# ------------------------------------------------------------------------------ opening
def _check_path(path: Path) -> None:
    if path.is_dir():
        raise _error(path, "is a directory; data.source: npz expects an .npz file (use "
                           "data.source: idx for a directory of IDX files)")
    if not path.exists():
        raise _error(path, "does not exist (data.source: npz expects an .npz file with arrays "
                           "x_train, y_train, x_test, y_test, or x, y)")


def _open(path: Path, f):
    """The archive of ``path`` from ``f``, the file open in binary mode (one opening serves the
    format check, the arrays and the digest)."""
    _check_path(path)
    magic = f.read(len(NPY_MAGIC))
    f.seek(0)
    if not magic.startswith(ZIP_MAGIC) and magic != NPY_MAGIC:
        raise _error(path, "is not an .npz file (an .npz is the zip archive numpy.savez "
                           "writes); save the arrays with numpy.savez")
    try:
        npz = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _error(path, f"is not a readable .npz file ({exc}); save it with "
                           "numpy.savez") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _error(path, "holds a single .npy array, not an .npz archive of named arrays; "
                           "save it with numpy.savez(path, x_train=..., y_train=..., ...)")
    return npz


def _layout(path: Path, names: set[str]) -> tuple[str, ...]:
    """The split names the file provides: ('train', 'test') or ('train',) for one set."""
    split_names = {n for pair in SPLIT_ARRAYS.values() for n in pair}
    has_split, has_single = bool(names & split_names), bool(names & set(SINGLE_ARRAYS))
    if has_split and has_single:
        raise _error(path, f"holds both x/y and x_train/y_train-style arrays ({sorted(names)}); "
                           "keep one layout")
    wanted = split_names if has_split else set(SINGLE_ARRAYS)
    missing = sorted(wanted - names)
    if missing:
        expect = ("x_train, y_train, x_test, y_test" if has_split else
                  "x [n, D] and y (or x_train, y_train, x_test, y_test)")
        raise _error(path, f"missing array(s) {missing}; found {sorted(names)}, expected {expect}")
    return ("train", "test") if has_split else ("train",)


def _array(npz, path: Path, name: str) -> np.ndarray:
    try:
        a = npz[name]
    except ValueError as exc:
        if "allow_pickle" in str(exc):      # allow_pickle=False refuses object arrays
            raise _error(path, f"array {name!r} holds Python objects (dtype=object); save it "
                               "as a numeric array") from None
        raise _error(path, f"array {name!r} cannot be read ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise _error(path, f"array {name!r} cannot be read ({exc})") from None
    if a.dtype.kind not in NUMERIC_KINDS:
        raise _error(path, f"array {name!r} has dtype {a.dtype} ({_kind_text(a)}); it must "
                           "hold numbers (bool, int or float)")
    a.flags.writeable = False
    return a


def _kind_text(a: np.ndarray) -> str:
    return {"U": "strings", "S": "bytes", "c": "complex numbers", "M": "dates",
            "m": "time spans", "V": "raw records"}.get(a.dtype.kind, "not numbers")


# ------------------------------------------------------------------------------ checking
def _check_finite(path: Path, name: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise _error(path, f"array {name!r} holds {bad} non-finite value(s) (NaN or inf) "
                               f"of {a.size}; remove or fix those examples")


def _check_x(path: Path, name: str, x: np.ndarray) -> None:
    if x.ndim != 2:
        raise _error(path, f"array {name!r} has shape {x.shape}; expected [n, D] (one flat "
                           "row per example: x.reshape(len(x), -1))")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise _error(path, f"array {name!r} has shape {x.shape}: no examples or no features")
    _check_finite(path, name, x)


def _is_one_hot(y: np.ndarray) -> bool:
    return bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1))


def _read_y(path: Path, name: str, y: np.ndarray, n: int, x_name: str):
    """(kind, labels, targets, width) of one y; checks its shape against n examples."""
    if y.ndim not in (1, 2):
        raise _error(path, f"array {name!r} has shape {y.shape}; expected one-hot [n, O] or "
                           "integer labels [n]")
    if len(y) != n:
        raise _error(path, f"{x_name!r} has {n} examples but {name!r} has {len(y)}; they "
                           "must have the same length")
    if y.ndim == 2 and y.shape[1] == 0:
        raise _error(path, f"array {name!r} has shape {y.shape}: no classes (one-hot [n, O] "
                           "needs O >= 1 columns)")
    _check_finite(path, name, y)
    if y.ndim == 2:
        if _is_one_hot(y):
            return ONE_HOT, np.argmax(y, axis=1).astype(np.int64), None, y.shape[1]
        return TARGETS, None, y, y.shape[1]
    if not np.all(y == np.round(y)) or (len(y) and y.min() < 0):
        bad = y[(y != np.round(y)) | (y < 0)][0].item()
        raise _error(path, f"array {name!r} is 1-dimensional but holds {bad!r}, which is not "
                           "a class label (integers 0, 1, 2, ...)")
    if len(y) and y.max() >= MAX_CLASSES:
        raise _error(path, f"array {name!r} holds the label {int(y.max())}; class labels must "
                           f"be below {MAX_CLASSES} (is it an id column?)")
    return LABELS, y.astype(np.int64), None, None


def _read_set(npz, path: Path, x_name: str, y_name: str) -> _Set:
    x = _array(npz, path, x_name)
    _check_x(path, x_name, x)
    kind, labels, targets, width = _read_y(path, y_name, _array(npz, path, y_name), len(x),
                                           x_name)
    return _Set(x, kind, labels, targets, width, (x_name, y_name))


def _check_agree(path: Path, train: _Set, test: _Set) -> None:
    (xa, ya), (xb, yb) = train.names, test.names
    if train.x.shape[1] != test.x.shape[1]:
        raise _error(path, f"{xa!r} has {train.x.shape[1]} features per example but {xb!r} "
                           f"has {test.x.shape[1]}; train and test must match")
    for s in (train, test):
        if s.kind == TARGETS:
            raise _error(path, f"array {s.names[1]!r} is neither one-hot nor integer labels "
                               "(a 2-D y needs one 1 and zeros elsewhere in every row)")
    if (train.kind == LABELS) != (test.kind == LABELS):
        raise _error(path, f"{ya!r} is {train.kind} but {yb!r} is {test.kind}; use one form "
                           "for both")
    if train.width != test.width:
        raise _error(path, f"{ya!r} has {train.width} classes (one-hot width) but {yb!r} has "
                           f"{test.width}; train and test must match")


@lru_cache(maxsize=4)
def _read_cached(path: str, size: int, mtime_ns: int, name: str) -> tuple[dict[str, _Set], str]:
    p = Path(path)
    with open(p, "rb") as f, _open(p, f) as npz:
        splits = _layout(p, set(npz.files))
        names = SPLIT_ARRAYS if len(splits) == 2 else {"train": SINGLE_ARRAYS}
        sets = {s: _read_set(npz, p, *names[s]) for s in splits}
        if len(sets) == 2:
            _check_agree(p, sets["train"], sets["test"])
        h = hashlib.sha256()             # the digest of the run's identity, from this opening
        hash_file(h, Path(name), f)
    return sets, h.hexdigest()


def _read(path: Path) -> tuple[dict[str, _Set], str]:
    path = Path(path)
    if not path.is_file():
        _check_path(path)          # the message for a directory or a missing file
    st = path.stat()
    return _read_cached(str(path.resolve()), st.st_size, st.st_mtime_ns, path.name)


def read(path: Path) -> dict[str, _Set]:
    """The file's validated sets: {'train', 'test'} (split layout) or {'train'} (one set).
    Read once (one opening) and cached until the file changes."""
    return _read(path)[0]


def digest(path: Path) -> str:
    """The SHA-256 of the file as :func:`ctpc.config.identity.input_digests` takes it, from
    the reading :func:`read` caches (the file is not opened again)."""
    return _read(path)[1]


def splits(path: Path) -> tuple[str, ...]:
    """The split names the file provides."""
    return tuple(read(path))


def _n_classes(sets: dict[str, _Set], output_dim: int | None) -> int:
    first = next(iter(sets.values()))
    if first.kind != LABELS:
        return first.width
    top = max(int(s.labels.max()) for s in sets.values()) + 1
    return max(top, output_dim or 0)


def raw_split(path: Path, split: str, output_dim: int | None) -> RawSplit:
    """``split`` ('train'|'test') of the file, unnormalised. Integer labels give
    ``max(largest label + 1, output_dim)`` classes; one-hot and targets their width."""
    sets = read(path)
    if split not in sets:
        raise _error(path, "holds one set (x, y), which is the train split, and no test split; "
                           "save x_train, y_train, x_test, y_test to have one")
    s = sets[split]
    return RawSplit(x=s.x, labels=s.labels, targets=s.targets,
                    n_classes=_n_classes(sets, output_dim), scale=1.0, mean=None, std=None,
                    where=f"data.path {str(path)!r} (arrays {s.names[0]}, {s.names[1]})",
                    names=s.names)
