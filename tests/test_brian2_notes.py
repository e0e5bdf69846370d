"""A compiled Brian2 target says, before a cold build, what it is doing and that it is cached
(the progress bar cannot move while it compiles); a structure built before, and numpy, say
nothing."""
import pytest

import ctpc

targets = pytest.importorskip("ctpc.sim.backends.brian2_backend.targets")


def _cfg(tmp_path, target):
    return ctpc.load_config({"backend": "brian2", "dtype": "float64", "device": "cpu",
                             "network": {"width": 4, "depth": 3},
                             "data": {"source": "digits", "batch_size": 2},
                             "integrator": {"scheme": "euler", "steps": 2},
                             "brian2": {"target": target, "build_dir": str(tmp_path)}})


@pytest.mark.parametrize("target", ["cython", "cpp_standalone"])
def test_cold_build_note_until_built(tmp_path, target):
    cfg = _cfg(tmp_path, target)
    note = targets.build_note(cfg, "abc123")
    assert note is not None and "first run" in note and str(tmp_path) in note
    assert "cached" in note
    targets.mark_built(cfg, "abc123")
    assert targets.build_note(cfg, "abc123") is None
    assert targets.build_note(cfg, "other") is not None        # another structure: cold again


def test_numpy_target_compiles_nothing(tmp_path):
    cfg = _cfg(tmp_path, "numpy")
    assert targets.build_note(cfg, "abc123") is None
    targets.mark_built(cfg, "abc123")
    assert not (tmp_path / "built").exists()
