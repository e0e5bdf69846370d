"""--threads auto (the command line's default): one thread for small steps, else the physical
cores other processes leave free."""
import argparse

import psutil
import pytest
import torch

import ctpc
from ctpc.cli import common as cli
from ctpc.build.objects import (ONE_THREAD_BELOW_MACS, auto_threads, free_cores, set_threads,
    step_macs)


def _cfg(width, depth, batch=64):
    return ctpc.load_config({"network": {"width": width, "depth": depth, "input_dim": 784,
                                         "output_dim": 10},
                             "data": {"source": "synthetic", "batch_size": batch},
                             "integrator": {"scheme": "euler", "steps": 1}})


def test_step_work_counts_every_product():
    # 2 (forward and transposed) x B x (D N + (L - 2) N^2 + N O)
    assert step_macs(_cfg(32, 32)) == 2 * 64 * (784 * 32 + 30 * 32 ** 2 + 32 * 10)


def _machine(monkeypatch, logical, physical, busy_percent, affinity=None):
    monkeypatch.setattr(psutil, "cpu_count", lambda logical_=True, **k: (
        logical if k.get("logical", logical_) else physical))
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: busy_percent)
    if affinity is not None:
        import os
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))


@pytest.mark.parametrize("logical, physical, busy, affinity, expected", [
    (2, 2, 0.0, 2, 2),        # idle 2-core machine: both cores
    (2, 2, 50.0, 2, 1),       # one core busy elsewhere: one thread
    (2, 2, 100.0, 2, 1),      # both busy: still one (never zero)
    (8, 4, 0.0, 8, 4),        # hyper-threads are not cores
    (8, 4, 50.0, 8, 2),       # half the machine busy: half the cores
    (16, 16, 0.0, 4, 4),      # a CPU affinity of 4 (e.g. taskset, a container): 4
])
def test_free_cores(monkeypatch, logical, physical, busy, affinity, expected):
    _machine(monkeypatch, logical, physical, busy, affinity)
    assert free_cores() == expected


def test_small_steps_get_one_thread_large_ones_the_free_cores(monkeypatch):
    _machine(monkeypatch, 4, 4, 0.0, 4)
    small, large = _cfg(8, 8), _cfg(128, 32)
    assert step_macs(small) < ONE_THREAD_BELOW_MACS < step_macs(large)
    assert auto_threads(small) == 1
    assert auto_threads(large) == 4
    before = torch.get_num_threads()
    try:
        assert set_threads("auto", small) == 1 and torch.get_num_threads() == 1
        assert set_threads(3) == 3 and torch.get_num_threads() == 3
        assert set_threads(None) is None and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("text", ["0", "-1", "two", ""])
def test_bad_thread_counts(text):
    with pytest.raises(argparse.ArgumentTypeError, match="'auto'"):
        cli.threads_arg(text)


def test_threads_default_is_auto():
    p = argparse.ArgumentParser()
    cli.add_run_arguments(p, out_help="")
    assert p.parse_args(["c.yaml"]).threads == "auto"
    assert p.parse_args(["c.yaml", "--threads", "2"]).threads == 2
