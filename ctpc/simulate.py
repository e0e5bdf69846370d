"""Command line: ``python -m ctpc.simulate CONFIG.yaml [--set k=v ...] [--out PATH] ...``.

Exit codes: 0 ok, 1 unexpected error, 2 bad configuration or arguments, 3 the run diverged
(its trace up to the divergence is still written).
"""
from __future__ import annotations

import argparse
import sys
import types
import warnings
from pathlib import Path

from .config import ConfigError, load_config
from .io import command_line
from .run import EXIT_CONFIG, EXIT_DIVERGED, EXIT_OK, simulate, summary_table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ctpc.simulate",
        description="Integrate a PC / PC-ALM network described by a YAML model and write its "
                    "trace as netCDF.",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 bad configuration, 3 diverged.")
    p.add_argument("config", help="model YAML, e.g. models/pcalm_deep.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set integrator.dt=0.5 (repeatable)")
    p.add_argument("--out", help="output .nc path (default: config 'output', else runs/NAME.nc)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override 'device'")
    p.add_argument("--backend", choices=["torch", "brian2"], help="override 'backend'")
    p.add_argument("--show-equations", action="store_true",
                   help="print the Brian2 equations of the model and exit (backend brian2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    return p


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"ctpc: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():   # _main's warning display is restored on return
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.backend:
        overrides.append(f"backend={args.backend}")
    try:
        cfg = load_config(args.config, overrides)
        if cfg.backend == "brian2":
            # Importing Brian2 routes Python warnings to its log; import it first, then show
            # warnings meant for the user (e.g. the first-order note) as one plain line.
            from .backends import brian2_backend  # noqa: F401
        warnings.showwarning = _print_warning
        if args.show_equations:
            from .backends.brian2_backend import equations_text
            print(equations_text(cfg))
            return EXIT_OK
        if cfg.sweep:
            print(f"ctpc: {args.config} has a sweep: section ({', '.join(cfg.sweep)}); "
                  "simulate runs its base config only. Use python -m ctpc.sweep to run the "
                  "sweep.", file=sys.stderr)
        out = Path(args.out or cfg.output or Path("runs") / f"{cfg.name or 'run'}.nc")
        ds = simulate(cfg, out=out, progress=not args.quiet, command=command_line())
    except ConfigError as exc:
        print(f"ctpc: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    a = ds.attrs
    if not args.quiet:
        print(summary_table(ds))
    print(f"status: {a['status']}  steps: {a['steps_completed']}/{a['n_steps']}  wall time: "
          f"{a['wall_time_s']:.2f} s  backend: {a['backend']} ({a['device']})")
    print(f"wrote {out}")
    if a["status"] == "diverged":
        print(f"ctpc: the run DIVERGED at t = {a['diverged_at']:g} ms (step "
              f"{a['steps_completed'] + 1}): the state became non-finite or exceeded "
              f"integrator.divergence_bound = {cfg.integrator.divergence_bound:g}. The trace up "
              f"to the last bounded state is saved. Try a smaller integrator.dt, another scheme, "
              f"or check the predicted stable dt with ctpc.stability.", file=sys.stderr)
        return EXIT_DIVERGED
    return EXIT_OK


class _CallableModule(types.ModuleType):
    """``import ctpc.simulate`` replaces the package attribute ``ctpc.simulate`` (the API
    function) by this module; making the module callable keeps ``ctpc.simulate(cfg)`` working
    either way."""

    def __call__(self, *args, **kwargs):
        return simulate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
