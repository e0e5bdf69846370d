"""Command line: ``python -m ctpc.simulate CONFIG.yaml [--set k=v ...] [--out PATH] ...``.

A thin entry point over :mod:`ctpc.cli` (shared with ``ctpc.train`` and ``ctpc.sweep``) and
:func:`ctpc.run.simulate`. Exit codes: see :mod:`ctpc.cli`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli
from .io import check_output_path
from .model import set_threads
from .loading import load_config
from .run import simulate, summary_table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ctpc.simulate",
        description="Integrate a PC / PC-ALM network described by a YAML model and write its "
                    "trace as netCDF.", epilog=cli.EXIT_CODES_EPILOG)
    cli.add_run_arguments(p, out_help="output .nc path (default: config 'output', else "
                                      "runs/NAME.nc)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override 'device'")
    p.add_argument("--backend", choices=["torch", "brian2"], help="override 'backend'")
    p.add_argument("--show-equations", action="store_true",
                   help="print the Brian2 equations of the model and exit (backend brian2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return cli.run_main("ctpc", lambda: _main(args))


def _main(args) -> int:
    set_threads(args.threads)
    overrides = list(args.overrides) + cli.device_override(args)
    if args.backend:
        overrides.append(f"backend={args.backend}")
    cfg = load_config(args.config, overrides)
    if cfg.backend == "brian2":
        # Importing Brian2 routes Python warnings to its log; import it first, then show
        # warnings meant for the user (e.g. the first-order note) as one plain line.
        from .backends import brian2_backend
        cli.show_warnings_plainly()
        if args.show_equations:
            print(brian2_backend.equations_text(cfg))
            return cli.EXIT_OK
    elif args.show_equations:
        print("ctpc: --show-equations prints the Brian2 model; add --backend brian2",
              file=sys.stderr)
        return cli.EXIT_CONFIG
    if cfg.sweep:
        cli.say("ctpc", f"{args.config} has a sweep: section ({', '.join(cfg.sweep)}); "
                        "simulate runs its base config only. Use python -m ctpc.sweep to run "
                        "the sweep.")
    out = args.out if args.out is not None else (cfg.output or Path("runs") /
                                                 f"{cfg.name or 'run'}.nc")
    check_output_path(out)
    ds = simulate(cfg, out=out, progress=not args.quiet,
                  command=cli.command_line("ctpc.simulate"))
    a = ds.attrs
    if not args.quiet:
        print(summary_table(ds))
    print(f"status: {a['status']}  steps: {a['steps_completed']}/{a['n_steps']}  wall time: "
          f"{a['wall_time_s']:.2f} s  backend: {a['backend']} ({a['device']})")
    print(f"wrote {out}")
    if a["status"] == "diverged":
        cli.say("ctpc", f"the run DIVERGED at t = {a['diverged_at']:g} ms (step "
                        f"{a['steps_completed'] + 1}): the state became non-finite or exceeded "
                        f"integrator.divergence_bound = {cfg.integrator.divergence_bound:g}. The "
                        "trace up to the last bounded state is saved. Try a smaller "
                        "integrator.dt, another scheme, or check the predicted stable dt with "
                        "ctpc.stability.")
        return cli.EXIT_DIVERGED
    return cli.EXIT_OK


cli.make_callable(__name__, simulate)

if __name__ == "__main__":
    sys.exit(main())
