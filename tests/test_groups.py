"""How a sweep's cells are grouped into replica programs: by replica key; on the CPU a replica
bigger than 1/16 of the L2 alone and at most 3/8 of the L2 of state per group; split for idle
workers; the biggest work first."""
from pathlib import Path

import pytest

from ctpc.sweep import plan_sweep
from ctpc.sweep.groups import (CACHE_FRACTION, DEFAULT_L2_BYTES, REPLICA_FRACTION, group_cells,
    group_work, l2_cache_bytes, max_replicas)

from conftest import small_config


def cells(sweep: dict, tmp_path: Path, **sections):
    raw = small_config(device="cpu", **sections)
    raw["sweep"] = sweep
    return plan_sweep(raw, out=tmp_path / "s.nc").cells


def seeds(groups):
    return [sorted(c.config.seed for c in g) for g in groups]


ONE = 4 * 3 * 6 * 8      # state of one small_config replica: H * B * N * 8 bytes


def test_one_group_per_key_within_the_budget(tmp_path):
    cs = cells({"seed": list(range(6)), "network.width": [6, 12]}, tmp_path)
    groups = group_cells(cs, l2_bytes=10**6)
    assert sorted(len(g) for g in groups) == [6, 6]
    for g in groups:
        assert len({c.config.network.width for c in g}) == 1


def test_a_group_whose_state_outgrows_the_budget_is_split_evenly(tmp_path):
    cs = cells({"seed": list(range(8))}, tmp_path)
    # an L2 of 16 replicas: 3/8 of it holds 6, so 8 cells make 2 even groups of 4, not 6 + 2
    l2 = int(ONE / REPLICA_FRACTION)
    assert int(CACHE_FRACTION * l2) // ONE == 6
    groups = group_cells(cs, l2_bytes=l2)
    assert sorted(map(len, groups)) == [4, 4]
    assert sorted(s for g in seeds(groups) for s in g) == list(range(8))


def test_a_replica_too_big_to_be_overhead_bound_runs_alone(tmp_path):
    cs = cells({"seed": list(range(6))}, tmp_path)
    # one replica is just over 1/16 of the L2, although 3/8 of it would hold 5
    l2 = int(ONE / REPLICA_FRACTION) - 1
    assert int(CACHE_FRACTION * l2) // ONE == 5
    groups = group_cells(cs, l2_bytes=l2)
    assert sorted(map(len, groups)) == [1] * 6
    assert sorted(s for g in seeds(groups) for s in g) == list(range(6))


def test_max_replicas_ignores_the_cache_on_a_gpu(tmp_path):
    cfg = cells({"seed": [0, 1]}, tmp_path)[0].config
    assert max_replicas(cfg, 16, l2_bytes=1) == 1
    assert max_replicas(cfg, 16, l2_bytes=10**9) == 16
    cuda = cfg.model_copy(update={"device": "cuda"})
    assert max_replicas(cuda, 16, l2_bytes=1) == 16


def test_groups_split_until_every_worker_has_a_task(tmp_path):
    cs = cells({"seed": list(range(4)), "network.width": [6, 12]}, tmp_path)
    groups = group_cells(cs, workers=4, l2_bytes=10**6)
    assert len(groups) == 4 and sum(map(len, groups)) == 8
    # the wider (costlier) key was split first: with 3 workers it is the one in two halves
    groups = group_cells(cs, workers=3, l2_bytes=10**6)
    widths = sorted((c.config.network.width, len(g)) for g in groups for c in g[:1])
    assert widths == [(6, 4), (12, 2), (12, 2)]


def test_biggest_work_first(tmp_path):
    cs = cells({"network.depth": [3, 8, 5], "seed": [0, 1]}, tmp_path)
    for enabled in (True, False):
        groups = group_cells(cs, l2_bytes=10**6, enabled=enabled)
        work = [group_work(g) for g in groups]
        assert work == sorted(work, reverse=True)
        assert groups[0][0].config.network.depth == 8


@pytest.mark.parametrize("size, expected", [("1024K", 1 << 20), ("2M", 2 << 20),
                                            ("524288", 524288)])
def test_l2_size_from_sysfs(tmp_path, size, expected):
    for i, (level, text) in enumerate([("1", "48K"), ("1", "32K"), ("2", size), ("3", "32M")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "size").write_text(text + "\n")
    assert l2_cache_bytes(tmp_path) == expected


def test_l2_size_falls_back_where_sysfs_is_missing(tmp_path):
    assert l2_cache_bytes(tmp_path / "absent") == DEFAULT_L2_BYTES
