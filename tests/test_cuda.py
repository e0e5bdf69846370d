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
from ctpc.training.graphs import _optimizer_state, _restore_in_place

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


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_warmup_undo_restores_a_fresh_optimiser(optimizer):
    """What the capture relies on, checked on the CPU: after warm-up steps, restoring the
    optimiser state in place makes its next step equal a fresh optimiser's first step."""
    make = {"adam": lambda p: torch.optim.Adam(p, lr=0.1),
            "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)}[optimizer]
    w = torch.randn(5, 3, dtype=torch.float64)
    fresh_w = w.clone()
    opt, fresh = make([w]), make([fresh_w])
    before = _optimizer_state(opt)
    state_tensors = None
    for _ in range(3):                      # warm-up
        w.grad = torch.randn_like(w)
        opt.step()
        state_tensors = {k: v for k, v in opt.state[w].items() if torch.is_tensor(v)}
    w.copy_(fresh_w)
    _restore_in_place(opt, before)
    # the same tensor objects (the graph's addresses), now holding a fresh state
    assert all(opt.state[w][k] is v for k, v in state_tensors.items())
    g = torch.randn_like(w)
    w.grad, fresh_w.grad = g.clone(), g.clone()
    opt.step()
    fresh.step()
    torch.testing.assert_close(w, fresh_w, rtol=0, atol=1e-15)


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
