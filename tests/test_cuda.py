"""The CUDA path (issue: a verified CUDA path). On a machine without a GPU every test here but
the CPU-checkable parts is skipped, and says so; `python sims/gpu_check.py` runs them on a GPU
together with the benchmarks. Device-independent tests run on CUDA with `pytest --device cuda`.

Tolerances. float64 on CUDA against float64 on the CPU: the same arithmetic in another
summation order (cuBLAS vs MKL), round-off ~1e-15 relative; 1e-10 absolute on O(1) quantities
leaves room for the ~100 steps of accumulation and flags any real difference. float32: relative
round-off ~6e-8 per operation, amplified by the inference's ~T steps and the layers' products;
1e-3 relative on the summaries is ~100x what that gives and far below any real difference (a
wrong kernel shows up as O(1))."""
import numpy as np
import pytest
import torch

import ctpc
from ctpc.training.graphs import GraphedUpdate, copy_state_, static_state

from conftest import small_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (skipped: run "
                                                                  "sims/gpu_check.py on one)")
SCHEMES = [("discrete", {"budget": 30, "steps": None}), ("semi_implicit", {"steps": 30}),
           ("rk4", {"steps": 30, "dt": 0.5})]


def both_devices(cfg):
    return (ctpc.simulate({**cfg, "device": "cpu"}), ctpc.simulate({**cfg, "device": "cuda"}))


@cuda
@pytest.mark.parametrize("scheme,length", SCHEMES, ids=[s for s, _ in SCHEMES])
@pytest.mark.parametrize("method", ["pc", "pcalm"])
def test_simulate_float64_cuda_equals_cpu(scheme, length, method):
    cfg = small_config(integrator={"scheme": scheme, **length},
                       dynamics={"method": method, "tau_h": 4.0, "tau_lambda": 1.0}
                       if scheme != "discrete" else {"method": method, "state_lr": 0.25,
                                                     "alpha": 1.0})
    cpu, gpu = both_devices(cfg)
    assert gpu.attrs["device"].startswith("cuda")
    for v in cpu.data_vars:
        np.testing.assert_allclose(gpu[v].values, cpu[v].values, rtol=0, atol=1e-10, err_msg=v)


@cuda
def test_simulate_float32_cuda_within_tolerance():
    cfg = small_config(dtype="float32", integrator={"scheme": "discrete", "budget": 30,
                                                     "steps": None},
                       dynamics={"state_lr": 0.25, "alpha": 1.0})
    cpu, gpu = both_devices(cfg)
    for v in ("credit_norm", "res_norm", "bp_cos", "energy"):
        np.testing.assert_allclose(gpu[v].values, cpu[v].values, rtol=1e-3, atol=1e-6)


@cuda
def test_divergence_and_recording_behave_the_same_on_cuda():
    cfg = small_config(integrator={"scheme": "euler", "dt": 2.5, "steps": 300,
                                   "check_every": 7},
                       dynamics={"tau_h": 10.0}, record={"every": 3, "layers": [1, 3]})
    cpu, gpu = both_devices(cfg)
    assert cpu.attrs["status"] == gpu.attrs["status"] == "diverged"
    assert cpu.attrs["diverged_at"] == gpu.attrs["diverged_at"]
    np.testing.assert_array_equal(cpu.step.values, gpu.step.values)
    np.testing.assert_allclose(gpu.h.values, cpu.h.values, rtol=1e-9, atol=1e-9)


TRAIN = dict(data={"source": "digits", "batch_size": 16, "train_subset": 160,
                   "test_subset": 64},
             network={"width": 6, "depth": 4, "activation": "relu", "input_dim": None,
                      "output_dim": None},
             integrator={"scheme": "discrete", "dt": 1.0, "budget": "auto", "steps": None},
             dynamics={"method": "pcalm", "state_lr": 0.25, "alpha": 1.0},
             training={"max_updates": 15, "eval_every": 5, "lr": 0.01,
                       "checkpoint_every": None})


@cuda
@pytest.mark.parametrize("method", ["bp", "pcalm"])
def test_train_float64_cuda_equals_cpu(method):
    cfg = small_config(**TRAIN)
    cfg["dynamics"]["method"] = method
    cpu = ctpc.train({**cfg, "device": "cpu"})
    gpu = ctpc.train({**cfg, "device": "cuda"})
    for v in ("train_loss", "test_acc", "bp_cos", "weight_norm"):
        np.testing.assert_allclose(gpu[v].values, cpu[v].values, rtol=0, atol=1e-9, err_msg=v)


@cuda
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_cuda_graph_update_equals_eager(optimizer):
    """The captured update replays exactly the eager one (float64), warm-up undone."""
    cfg = small_config(**TRAIN, device="cuda")
    cfg["training"] = {**cfg["training"], "optimizer": optimizer}
    eager = ctpc.train(cfg)
    cfg["training"]["cuda_graph"] = True
    graphed = ctpc.train(cfg)
    for v in ("train_loss", "grad_norm", "test_acc", "bp_cos"):
        np.testing.assert_allclose(graphed[v].values, eager[v].values, rtol=0, atol=1e-12,
                                   err_msg=v)


def test_cuda_graph_refused_on_the_cpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = small_config(**TRAIN, device="cpu")
    cfg["training"]["cuda_graph"] = True
    with pytest.raises(ctpc.ConfigError, match="cuda_graph"):
        ctpc.train(cfg)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "sgd without momentum"])
def test_graph_state_protocol_on_the_cpu(optimizer):
    """What the capture relies on, checked on the CPU with the graph's replay played by the
    update itself: warm-up updates leave the static input state as it is (the update is pure);
    an update from the static state (SGD's missing buffers made zero), copied back into it in
    place, keeps its tensor objects (the graph's addresses) and follows the eager trajectory
    exactly, also after a state from outside (frozen replicas) is copied in."""
    from functools import partial
    from ctpc.training import prepare_config
    from ctpc.training.loop import Batches
    from ctpc.training.setup import build_training
    from ctpc.training.update import Optimiser, freeze, update
    cfg = small_config(**TRAIN, device="cpu")
    cfg["training"] = {**cfg["training"], "optimizer": optimizer.split()[0]}
    if optimizer != "adam":
        cfg["training"]["momentum"] = 0.0 if "without" in optimizer else 0.9
    setup = build_training(prepare_config(cfg))
    step = partial(update, rule=setup.rule, optimiser=Optimiser.of(setup))
    batches = Batches(setup)
    eager = Optimiser.of(setup).init(setup.model.weights)
    with torch.no_grad():
        static = static_state(eager)
        before = [t.clone() for t in static.tensors()]
        for _ in range(3):                                   # the warm-up
            step(static, *batches(0))
        for a, b in zip(static.tensors(), before):
            assert torch.equal(a, b)
        addresses = [t.data_ptr() for t in static.tensors()]
        for u in range(4):
            out, _ = step(static, *batches(u))                # the "replay"
            copy_state_(static, out)
            eager, _ = step(eager, *batches(u))
            if u == 1:                                        # a state from outside
                eager = freeze(eager, setup.model.weights, torch.tensor([0]))
                copy_state_(static, eager)
            assert [t.data_ptr() for t in static.tensors()] == addresses
            for a, b in zip(static.params.tensors, eager.params.tensors):
                assert torch.equal(a, b)
    with pytest.raises(ctpc.ConfigError, match="cuda_graph"):
        GraphedUpdate(step, torch.device("cpu"))


def test_gpu_check_script_runs_and_marks_skipped_parts(tmp_path):
    """sims/gpu_check.py is what a lent GPU runs: on the CPU it must run to the end, skip every
    CUDA part visibly and still write its table."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "sims" / "gpu_check.py"), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "gpu_check.md").read_text()
    assert (tmp_path / "gpu_check.json").exists()
    if not torch.cuda.is_available():
        assert "SKIPPED" in proc.stdout and "SKIPPED" in table
