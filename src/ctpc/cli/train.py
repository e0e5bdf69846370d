"""Command line: ``python -m ctpc.train CONFIG.yaml [--set k=v ...] [--out PATH] [--resume]``.

A thin entry point over :mod:`ctpc.cli.common` and :func:`ctpc.training.train` (its pieces: the
config resolved once by :func:`~ctpc.training.prepare_config`, the output checked once, then
:func:`~ctpc.training.run_training`). Exit codes: see
:mod:`ctpc.cli.common` (3: the training diverged; its data up to then and the last good checkpoint are
kept).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ctpc.cli import common as cli
from ctpc.config.paths import TRAINING_COMPANIONS, check_outputs, default_output, run_inputs
from ctpc.build.objects import set_threads
from ctpc.training import prepare_config, run_training


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ctpc.train",
        description="Train a network with BP, PC or PC-ALM (dynamics.method) and write its "
                    "training history as netCDF, the final weights beside it.",
        epilog=cli.EXIT_CODES_EPILOG)
    cli.add_run_arguments(p, out_help="output .nc path (default: config 'output', else "
                                      "runs/NAME.nc; it must end in .nc); also writes "
                                      "NAME.weights.npz and the checkpoint NAME.ckpt.pt "
                                      "beside NAME.nc")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override 'device'")
    p.add_argument("--resume", action="store_true",
                   help="continue the run at the output from its checkpoint (same command + "
                        "--resume after an interrupted run; with --set training.epochs=N it "
                        "extends a run); without a checkpoint, starts from the beginning")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    again = cli.rerun_command("ctpc.train", argv, add=("--resume",), drop=("--overwrite",))
    return cli.run_main("ctpc.train", lambda: _main(args), rerun=f"to continue, run: {again}")


def _main(args) -> int:
    cfg = prepare_config(args.config, list(args.overrides) + cli.device_override(args))
    set_threads(args.threads, cfg)
    if cfg.sweep:
        cli.say("ctpc.train", f"{args.config} has a sweep: section; ctpc.train runs its base "
                              "config only. Use python -m ctpc.sweep to run the sweep.")
    out, what = default_output(args.out, cfg.output, cfg.name, "train")
    out = check_outputs(out, what, inputs=run_inputs(cfg, config_file=args.config),
                        companions=TRAINING_COMPANIONS)
    # the config is resolved and the output checked: neither happens again
    ds = run_training(cfg, out, resume=args.resume, overwrite=args.overwrite,
                      progress=not args.quiet, command=cli.command_line("ctpc.train"))
    a = ds.attrs
    if not args.quiet:
        print(summary_table(ds))
        print(f"status: {a['status']}  updates: {a['updates_completed']}/{a['n_updates']}  "
              f"wall time: {a['wall_time_s']:.1f} s  ({a['samples_per_s']:.0f} samples/s)")
        print(f"wrote {out}")
    if a["status"] == "diverged":
        cli.say("ctpc.train", divergence_message(ds))
        return cli.EXIT_DIVERGED
    return cli.EXIT_OK


def divergence_message(ds) -> str:
    """What diverged, from the history: training's only check is for non-finite values (the
    loss, or the norm of the weights after the update) at its sync points."""
    u = int(ds.attrs["diverged_at_update"])
    n = ds.sizes["update"]
    bad = [name for k, name in (("train_loss", "the training loss"),
                                ("weight_norm", "the weights"))
           if u <= n and not np.isfinite(ds[k].values[u - 1])]
    what = " and ".join(bad) or "the training loss or the weights"
    return (f"training DIVERGED at update {u}: {what} became non-finite (NaN or inf). The "
            "history up to then and the last good checkpoint are kept. Try a smaller "
            "training.lr or a stabler inference (see ctpc.studies.stability).")


def summary_table(ds) -> str:
    """Accuracy, the final per-layer BP cosine at a few depths, time."""
    last = ds.isel(eval=-1)
    L = ds.sizes["weight"]
    rows = sorted({1, 2, max(1, L // 4), max(1, L // 2), max(1, 3 * L // 4), L})
    how = "autograd" if ds.attrs["method"] == "bp" else ds.attrs["scheme"]
    lines = [f"method {ds.attrs['method']}  ({how})  after {int(last.eval_update)} updates "
             f"({float(last.eval_epoch):.2f} epochs)",
             f"  accuracy  train {float(last.train_acc):.4f}  test {float(last.test_acc):.4f}",
             f"  MSE       train {float(last.train_mse):.4f}  test {float(last.test_mse):.4f}",
             "  BP cosine of the update per weight matrix (probe batch):"]
    cos = last.bp_cos.sel(weight=rows).values
    lines.append("    " + "  ".join(f"W_{l}: {c:.3f}" for l, c in zip(rows, cos))
                 + f"  (whole network {float(last.bp_cos_global):.3f})")
    if not np.isfinite(cos).all():
        lines.append("    (NaN: the replica diverged)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
