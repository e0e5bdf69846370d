"""PC-ALM under biological constraints (guide: biology): noisy neurons, conduction delays and
spiking error neurons, as data and figures.

Studies (each a function of :mod:`ctpc.studies`; the figures are :mod:`ctpc.analysis.biology`'s):

* ``noise_alignment_{linear,relu}``: the BP cosine and relative error of the weight read-out at
  the noisy PC-ALM fixed point, averaged over a window, as sigma grows
  (:func:`ctpc.studies.noise.noise_alignment`);
* ``noise_training``: one digits training cell with noise against the noise-free run
  (:func:`ctpc.studies.noise.noise_training`);
* ``delay_edges``: the largest stable conduction delay per scheme, predicted from the augmented
  one-step map's spectrum and measured by runs just inside and outside it
  (:func:`ctpc.studies.delay.delay_edges`);
* ``delay_propagation``: the credit's arrival time at the input layer against depth, per delay
  (:func:`ctpc.studies.delay.delay_propagation`);
* ``spiking_limit``: Brian2's spiking error neurons against the rate model as r_max grows,
  linear and ReLU (:func:`ctpc.studies.spiking.spiking_limit`);
* ``spiking_arrival``: ballistic arrival with spiking errors (:func:`ctpc.studies.spiking.
  spiking_arrival`).

Writes OUT/<study>.nc (atomically) and OUT/<study>.png, and OUT/wall_times.csv (the wall time of
each study on this machine). Resumable: a study whose .nc exists is not run again (``--force``
reruns it); its figure is redrawn from the file.

    python sims/biology.py                 # the full studies (minutes on 2 cores)
    python sims/biology.py --small         # seconds per study (CI, the notebook)
    python sims/biology.py --only noise_alignment_linear,delay_edges
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import xarray as xr


def _studies(small: bool) -> dict:
    """study name -> (a function returning its Dataset, the figure function's name)."""
    from ctpc.studies import delay, noise, spiking
    return {
        "noise_alignment_linear": (lambda: noise.noise_alignment(activation="linear",
                                                                 small=small),
                                   "plot_noise_alignment"),
        "noise_alignment_relu": (lambda: noise.noise_alignment(activation="relu", small=small),
                                 "plot_noise_alignment"),
        "noise_training": (lambda: noise.noise_training(small=small), "plot_noise_training"),
        "delay_edges": (lambda: delay.delay_edges(small=small), "plot_delay_edges"),
        "delay_propagation": (lambda: delay.delay_propagation(small=small),
                              "plot_delay_propagation"),
        "spiking_limit": (lambda: spiking.spiking_limit(small=small), "plot_spiking_limit"),
        "spiking_arrival": (lambda: spiking.spiking_arrival(small=small),
                            "plot_spiking_arrival"),
    }


STUDIES = ("noise_alignment_linear", "noise_alignment_relu", "noise_training", "delay_edges",
           "delay_propagation", "spiking_limit", "spiking_arrival")


def run(out: Path, small: bool, only=None, force: bool = False) -> dict[str, xr.Dataset]:
    """Run (or reuse) each study; returns name -> Dataset (opened from its file)."""
    from ctpc.common.version import __version__
    from ctpc.results.dataset import open_results, write_netcdf
    out.mkdir(parents=True, exist_ok=True)
    studies = _studies(small)
    names = list(only) if only else list(STUDIES)
    unknown = sorted(set(names) - set(studies))
    if unknown:
        raise SystemExit(f"sims/biology.py: unknown studies {unknown}; choose from "
                         f"{', '.join(STUDIES)}")
    done = {}
    walls = _read_walls(out)
    for name in names:
        path = out / f"{name}.nc"
        if force or not path.exists():
            t0 = time.perf_counter()
            ds = studies[name][0]()
            ds.attrs.update(ctpc_version=__version__, study=name, small=int(small))
            write_netcdf(ds, path)
            walls[name] = time.perf_counter() - t0
            print(f"{name}: {walls[name]:.1f} s -> {path}", flush=True)
        done[name] = open_results(path).load()
    _write_walls(out, walls)
    return done


def _read_walls(out: Path) -> dict[str, float]:
    path = out / "wall_times.csv"
    if not path.exists():
        return {}
    with open(path) as f:
        return {row["study"]: float(row["wall_s"]) for row in csv.DictReader(f)}


def _write_walls(out: Path, walls: dict[str, float]) -> None:
    tmp = out / "wall_times.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study", "wall_s"])
        for name in STUDIES:
            if name in walls:
                w.writerow([name, f"{walls[name]:.2f}"])
    tmp.replace(out / "wall_times.csv")


def figures(datasets: dict[str, xr.Dataset]) -> dict:
    """name -> matplotlib Figure, by the analysis functions the notebook uses too."""
    from ctpc.analysis import biology
    fns = {name: fig for name, (_, fig) in _studies(True).items()}
    return {name: getattr(biology, fns[name])(ds) for name, ds in datasets.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="small networks and runs (seconds)")
    p.add_argument("--out", type=Path, default=Path("runs/biology"), help="output directory")
    p.add_argument("--only", help="comma-separated studies (default: all)")
    p.add_argument("--force", action="store_true", help="rerun studies whose file exists")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datasets = run(args.out, args.small, args.only.split(",") if args.only else None,
                   args.force)
    for name, fig in figures(datasets).items():
        fig.savefig(args.out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    print("wrote", ", ".join(f"{n}.nc/.png" for n in datasets), "and wall_times.csv in",
          args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
