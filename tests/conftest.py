import os

import pytest

# Tests are CPU-only and deterministic. Their tensors are tiny: extra threads only add
# synchronisation (seen: 30x slower with 2 threads on a loaded 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def small_config(**sections):
    """A tiny float64 synthetic-data network; sections override/extend the defaults."""
    cfg = {
        "dtype": "float64", "device": "cpu",
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
