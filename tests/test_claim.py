"""sims/claim.py: the verdict rule on known inputs, and the whole claim test end to end on a
tiny digits instance (2 seeds, L = 4, 12 updates per cell)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _claim():
    spec = importlib.util.spec_from_file_location("claim", ROOT / "sims" / "claim.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["claim"] = mod
    spec.loader.exec_module(mod)
    return mod


claim = _claim()


def test_interval_is_the_t_interval():
    # d = [1, 2, 3]: mean 2, sd 1, t_{0.975, 2} = 4.302653 (tables) -> half-width 4.302653/sqrt(3)
    mean, sd, n, lo, hi = claim.paired_interval([1.0, 2.0, 3.0])
    half = 4.302653 / np.sqrt(3)          # the table's 7 digits: agree to 5e-7 / sqrt(3)
    assert (mean, sd, n) == (2.0, 1.0, 3)
    assert lo == pytest.approx(2 - half, abs=5e-7) and hi == pytest.approx(2 + half, abs=5e-7)


@pytest.mark.parametrize("d, expected", [
    ([-8.0, -9.5, -6.5], claim.BEHIND),           # mean -8, interval [-11.7, -4.3]: below -1
    ([0.3, -0.2, 0.1, 0.0], claim.MATCHES),       # interval [-0.3, 0.4]: inside +-2
    ([1.5, -1.2, 0.3], claim.MATCHES),            # interval wider than +-2, contains 0, |mean| 0.2
    ([-3.0, 1.0, -4.0], claim.UNDECIDED),         # contains 0 but |mean| = 2 > 1
    ([-1.5, -1.6, -1.4], claim.MATCHES),          # [-1.75, -1.25]: inside +-2 (tested first)
    ([-0.5, -2.5, -1.5], claim.UNDECIDED),        # [-3.98, 0.98]: contains 0, |mean| 1.5 > 1
    ([-2.0], claim.UNDECIDED),                    # one seed: no interval
])
def test_verdicts_on_known_inputs(d, expected):
    assert claim.verdict(d)["verdict"] == expected


def test_rule_flags_change_the_verdict():
    d = [-1.5, -2.5, -2.0]                        # interval [-3.24, -0.76]
    assert claim.verdict(d)["verdict"] == claim.UNDECIDED
    assert claim.verdict(d, claim.Rule(band=4.0))["verdict"] == claim.MATCHES
    assert claim.verdict(d, claim.Rule(behind=0.5))["verdict"] == claim.BEHIND
    assert claim.verdict(d, claim.Rule(confidence=0.5))["verdict"] == claim.BEHIND


def _acc(cells: dict[int, tuple[list, list]]) -> pd.DataFrame:
    """Accuracy rows for a BP and a PC-ALM 2L variant per width: {width: (bp, pcalm)}."""
    rows = []
    for w, (bp, pa) in cells.items():
        for v, accs in ((claim.VARIANTS[1], bp), (claim.VARIANTS[0], pa)):
            for s, a in enumerate(accs):
                rows.append({"variant": v.name, "label": v.label, "method": v.method,
                             "budget_factor": v.budget_factor, "step_rule": v.step_rule,
                             "width": w, "seed": s, "status": "ok", "test_acc": a,
                             "eta_h": 0.25})
    return pd.DataFrame(rows)


def test_cells_built_to_be_behind_match_or_undecided():
    acc = _acc({8: ([90.0, 91.0, 89.0], [82.0, 81.5, 83.0]),     # behind
                16: ([90.0, 91.0, 89.0], [90.2, 90.8, 89.1]),    # matches
                32: ([90.0, 91.0, 89.0], [86.0, 92.0, 85.0])})   # undecided
    t = claim.verdict_table(acc)
    assert dict(zip(t.width, t.verdict)) == {8: claim.BEHIND, 16: claim.MATCHES,
                                              32: claim.UNDECIDED}
    lines = claim.status_lines(t, depth=128)
    assert "REFUTED" in lines[-2] and "T = 2L" in lines[-2]
    matching = claim.verdict_table(acc[acc.width == 16])
    assert "HOLDS" in claim.status_lines(matching, 128)[-2]
    assert "UNDECIDED" in claim.status_lines(claim.verdict_table(acc[acc.width == 32]), 128)[-2]


def test_claim_end_to_end_small(tmp_path):
    """Every variant trains (2 seeds), the report has a row per variant, a verdict line per
    cell, the two claim lines, diagnostics for the PC-ALM variants and both figures; a second
    call reuses every cell."""
    from distributed import Client, LocalCluster
    out = tmp_path / "claim"
    # an in-process cluster on loopback, given as --scheduler: no worker processes to start
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster):
        address = cluster.scheduler_address
        assert claim.main(["--small", "--out", str(out), "--quiet", "--scheduler", address]) == 0
        _check_small_report(out)
        stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.cells/*.nc")}
        assert claim.main(["--small", "--out", str(out), "--quiet", "--no-diagnostics",
                           "--scheduler", address]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.cells/*.nc")} == stamps


def _check_small_report(out):
    t = pd.read_csv(out / "verdicts.csv")
    assert sorted(t.variant) == sorted(v.name for v in claim.VARIANTS if v.method != "bp")
    assert set(t.verdict) <= {claim.MATCHES, claim.BEHIND, claim.UNDECIDED}
    acc = pd.read_csv(out / "accuracy.csv")
    assert len(acc) == len(claim.VARIANTS) * 2 and (acc.status == "ok").all()
    # the paired difference is PC-ALM's accuracy minus BP's, seed by seed
    bp = acc[acc.variant == "bp"].set_index("seed").test_acc
    pa = acc[acc.variant == "pcalm_2L"].set_index("seed").test_acc
    row = t[t.variant == "pcalm_2L"].iloc[0]
    assert row["mean"] == pytest.approx((pa - bp).mean(), abs=1e-9)
    diag = pd.read_csv(out / "diagnostics.csv")
    assert set(diag.when) == {"start", "end"} and set(diag.layer) == {1, 2, 3}
    assert diag.arrival_step.notna().all()
    for f in ("gap_vs_budget.png", "arrival.png", "verdicts.md", "README.txt"):
        assert (out / f).stat().st_size > 0
    text = (out / "verdicts.md").read_text()
    assert "CLAIM at L = 4, the paper's protocol" in text
