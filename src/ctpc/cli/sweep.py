"""Command line: ``python -m ctpc.sweep CONFIG.yaml [--out PATH] [--scheduler ADDRESS] ...``.

Exit codes: 0 every cell ok or diverged (diverged cells are results), 1 some cells crashed
(the combined file is still written; rerun the same command to retry them) or an unexpected
error, 2 bad configuration, arguments, output path or scheduler address, 130 interrupted
(Ctrl-C) and 143 terminated (SIGTERM): finished cells are kept; rerun to resume.
"""
from __future__ import annotations

import argparse
import sys

from ctpc.cli import common as cli
from ctpc.sweep import plan_sweep, run_sweep
from ctpc.sweep.cluster import check_scheduler_address

EXIT_OK, EXIT_CELLS_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = (
    cli.EXIT_OK, cli.EXIT_ERROR, cli.EXIT_CONFIG, cli.EXIT_INTERRUPTED)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ctpc.sweep",
        description="Run every combination of a model's sweep: values on a Dask cluster and "
                    "write one netCDF dataset whose sweep keys are dimensions. Resumable: "
                    "rerunning with the same output skips the cells already done.",
        epilog="Exit codes: 0 ok (cells ok or diverged), 1 some cells crashed (rerun to retry), "
               "2 bad configuration, output path or scheduler address, 130 interrupted "
               "(Ctrl-C), 143 terminated (SIGTERM); rerun to resume.")
    p.add_argument("config", help="model YAML with a sweep: section")
    p.add_argument("--out", help="combined .nc path (default: config 'output', else "
                                 "runs/NAME.nc; it must end in .nc); per-cell files go to "
                                 "NAME.cells/ beside NAME.nc")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use a running Dask cluster, e.g. tcp://10.0.0.5:8786 (schemes: tcp, "
                        "tls, ucx, inproc, ws, wss; default: start a local cluster)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local cluster size (default: one process per core, at most one per "
                        "cell)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set network.width=16 or "
                        "--set 'sweep.seed=[0,1,2]' (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells (done or to run) and exit without running anything")
    p.add_argument("--no-group", action="store_true",
                   help="run every cell on its own instead of grouping cells that share "
                        "shapes into replicas of one tensor program")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but warnings and errors (no progress bar, no summary)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    again = cli.rerun_command("ctpc.sweep", argv)
    return cli.run_main("ctpc.sweep", lambda: _main(args),
                        rerun=f"to continue (finished cells are skipped), run: {again}")


def _main(args) -> int:
    if args.dry_run:
        if args.scheduler is not None:
            check_scheduler_address(args.scheduler)
        # a cluster given by address has machines of its own: only a local run checks this one
        plan = plan_sweep(args.config, args.overrides, out=args.out,
                          check_machine=args.scheduler is None)
        for cell in plan.cells:
            print(f"{cell.key}  {plan.state(cell):6}  {cell.label}")
        damaged = f", {len(plan.damaged)} damaged (will rerun)" if plan.damaged else ""
        print(f"{len(plan.cells)} cells, {len(plan.done)} done{damaged}; output {plan.out}, "
              f"cells in {plan.cells_dir}")
        return EXIT_OK
    ds = run_sweep(args.config, args.overrides, out=args.out, scheduler=args.scheduler,
                   n_workers=args.workers, progress=not args.quiet,
                   command=cli.command_line("ctpc.sweep"), group=not args.no_group)
    a = ds.attrs
    if not args.quiet:
        print(f"cells: {summary_counts(a)}; per-cell files in {a['cells_dir']}")
        print(f"wrote {a['path']}")
    if a["n_error"]:
        print(f"ctpc.sweep: {a['n_error']} cell(s) crashed; their messages are in the 'error' "
              "variable. Fix the cause and rerun the same command: only those cells run again.",
              file=sys.stderr)
        return EXIT_CELLS_FAILED
    return EXIT_OK


def summary_counts(a: dict) -> str:
    """``12 (reused 8, ran 4: ok 3, diverged 1, crashed 0; in all ok 10, diverged 2, crashed
    0)`` from run_sweep's attributes: what this run reused and ran, and (when it reused any)
    the outcome of every cell."""
    ran = (f"ran {a['n_ran']}: ok {a['n_ran_ok']}, diverged {a['n_ran_diverged']}, crashed "
           f"{a['n_ran_error']}")
    total = (f"; in all ok {a['n_ok']}, diverged {a['n_diverged']}, crashed {a['n_error']}"
             if a["n_reused"] else "")
    return f"{a['n_cells']} (reused {a['n_reused']}, {ran}{total})"


if __name__ == "__main__":
    sys.exit(main())
