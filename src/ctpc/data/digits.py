"""scikit-learn's bundled 8x8 digits (1797 examples, 10 classes, grey levels 0..16), offline.

The set has no published train/test split, so ctpc defines one, fixed for every run seed:

* stratified, 20 % test: the test split has ``ceil(1797 / 5) = 360`` examples, the train split
  the other 1437. Each class c (n_c examples) gives the floor of ``n_c / 5`` to the test split;
  the leftover test places go to the classes with the largest remainders (ties: lower class
  first). So every class's test count is within one example of 20 % of the class.
* which examples of a class go to test is a permutation drawn from
  ``numpy.random.default_rng(SPLIT_SEED = 0)`` (the classes in order 0..9), independent of the
  config's ``seed``, so every run seed evaluates on the same test set;
* each split keeps the data set's own order (ascending index), so ``train_subset: n`` is the
  first n training examples of the file.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

N_EXAMPLES, N_CLASSES, PIXELS = 1797, 10, 64
SCALE = 16.0                                   # grey levels 0..16 -> [0, 1], like MNIST's /255
# Pixel mean and std of the whole set after /16 (all 1797 x 64 values), the default
# normalisation (checked against the data in tests/test_data.py).
MEAN, STD = 0.30526028624095713, 0.3760492217920148
SPLIT_SEED = 0
TEST_NUM, TEST_DEN = 1, 5                      # test fraction 1/5, exact integer arithmetic


@lru_cache(maxsize=1)
def examples() -> tuple[np.ndarray, np.ndarray]:
    """Grey levels float64 ``[1797, 64]`` (0..16) and labels int64 ``[1797]``, read-only."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, labels = digits.data.astype(np.float64), digits.target.astype(np.int64)
    x.flags.writeable = labels.flags.writeable = False
    return x, labels


def per_class_test_counts(class_sizes: np.ndarray) -> np.ndarray:
    """Test examples per class: ``sum = ceil(n / 5)``, each within one of ``n_c / 5``."""
    total = -(-int(class_sizes.sum()) * TEST_NUM // TEST_DEN)
    counts = class_sizes * TEST_NUM // TEST_DEN
    remainders = class_sizes * TEST_NUM % TEST_DEN
    order = np.argsort(-remainders, kind="stable")       # largest remainder, lower class first
    counts[order[:total - counts.sum()]] += 1
    return counts


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Ascending example indices (int64) of the 'train' (1437) and 'test' (360) splits."""
    _, labels = examples()
    counts = per_class_test_counts(np.bincount(labels, minlength=N_CLASSES))
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                           for c, k in enumerate(counts)])
    test = np.sort(test)
    train = np.setdiff1d(np.arange(len(labels)), test)
    for a in (train, test):
        a.flags.writeable = False
    return {"train": train, "test": test}


def split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels ``[n, 64]`` (0..16) and labels ``[n]`` of split 'train' or 'test'."""
    x, labels = examples()
    rows = split_indices()[name]
    return x[rows], labels[rows]
