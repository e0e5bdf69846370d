"""Command line: ``python -m ctpc.simulate CONFIG.yaml [--set k=v ...] [--out PATH] ...``.

A thin entry point over :mod:`ctpc.cli.common` (shared with ``ctpc.train`` and ``ctpc.sweep``) and
:func:`ctpc.sim.simulation.simulate` (its pieces: the config loaded and resolved once, the output
checked once, then :func:`~ctpc.sim.simulation.run_simulation`). Exit codes: see
:mod:`ctpc.cli.common`.
"""
from __future__ import annotations

import argparse
import sys

from ctpc.cli import common as cli
from ctpc.config.paths import check_outputs, default_output, run_inputs
from ctpc.build.objects import set_threads
from ctpc.build.resolve import load_config
from ctpc.sim.simulation import run_simulation, summary_table


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
                   help="print the model's equations as the Brian2 backend generates them, "
                        "and exit (any backend)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    again = cli.rerun_command("ctpc.simulate", argv)
    return cli.run_main("ctpc", lambda: _main(args),
                        rerun=f"to run it again (from the beginning): {again}")


def _main(args) -> int:
    overrides = list(args.overrides) + cli.device_override(args)
    if args.backend:
        overrides.append(f"backend={args.backend}")
    if args.show_equations and args.backend != "brian2":
        overrides.append("backend=brian2")       # the equations are Brian2's view of the model
    cfg = load_config(args.config, overrides)
    set_threads(args.threads, cfg)
    if cfg.backend == "brian2":
        # Importing Brian2 routes Python warnings to its log; import it first, then show
        # warnings meant for the user (e.g. the first-order note) as one plain line.
        from ctpc.sim.backends import brian2_backend
        cli.show_warnings_plainly()
        if args.show_equations:
            print(brian2_backend.equations_text(cfg))
            return cli.EXIT_OK
    if cfg.sweep:
        cli.say("ctpc", f"{args.config} has a sweep: section ({', '.join(cfg.sweep)}); "
                        "simulate runs its base config only. Use python -m ctpc.sweep to run "
                        "the sweep.")
    out, what = default_output(args.out, cfg.output, cfg.name, "run")
    out = check_outputs(out, what, inputs=run_inputs(cfg, config_file=args.config))
    # the config is resolved and the output checked: neither happens again
    ds = run_simulation(cfg, out, progress=not args.quiet, overwrite=args.overwrite,
                        command=cli.command_line("ctpc.simulate"))
    a = ds.attrs
    if not args.quiet:
        print(summary_table(ds))
        print(f"status: {a['status']}  steps: {a['steps_completed']}/{a['n_steps']}  wall time: "
              f"{a['wall_time_s']:.2f} s  backend: {a['backend']} ({a['device']})")
        print(f"wrote {out}")
    if a["status"] == "diverged":
        cli.say("ctpc", divergence_message(a, cfg))
        return cli.EXIT_DIVERGED
    return cli.EXIT_OK


def divergence_message(attrs: dict, cfg) -> str:
    """The one line of a diverged run, per its ``diverged_reason`` (ctpc.core.engine)."""
    it = cfg.integrator
    reason = attrs.get("diverged_reason", "bound")
    why = {
        "non-finite": "its state became non-finite (NaN or inf)",
        "bound": f"its state exceeded integrator.divergence_bound = {it.divergence_bound:g}",
        "growth": f"its state grew beyond integrator.growth_bound = {it.growth_bound:g} times "
                  f"its initial size (max(1, max|S_0|)), below integrator.divergence_bound = "
                  f"{it.divergence_bound:g}",
    }.get(reason, f"diverged_reason {reason!r}")
    fix = ("Try a smaller integrator.dt, another scheme, or check the predicted stable dt with "
           "ctpc.studies.stability")
    if reason == "growth":
        fix += ("; if this growth is expected, raise integrator.growth_bound (.inf turns the "
                "check off)")
    return (f"the run DIVERGED at t = {attrs['diverged_at']:g} ms (step "
            f"{attrs['steps_completed'] + 1}; diverged_reason: {reason}): {why}. The trace up to "
            f"the last bounded state is saved. {fix}.")


if __name__ == "__main__":
    sys.exit(main())
