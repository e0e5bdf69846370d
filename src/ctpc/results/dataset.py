"""RunResult -> labelled ``xarray.Dataset`` -> compressed netCDF4 (written atomically)."""
from __future__ import annotations

import contextlib
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import dask
import netCDF4
import numpy as np
import xarray as xr
from dask.diagnostics import ProgressBar

from ctpc.common import signals
from ctpc.common.version import __version__
from ctpc.common.errors import InputError
from ctpc.config.schema import Config
from ctpc.config.paths import check_outputs, temporary as _temporary, write_failed
from ctpc.common.labels import var_attrs
from ctpc.results.run_result import SERIES_LAYER, SERIES_WEIGHT, RunResult

# Short long_name (the axis label), units where there are any (neuron variables, norms, cosines
# and energies are dimensionless: no units), the sentence in description (ctpc.common.labels).
VAR_ATTRS = {
    "h": var_attrs("activity h", None, "activity neurons h (per layer, sample, unit)"),
    "lam": var_attrs("multiplier λ", None, "multiplier neurons lambda"),
    "err": var_attrs("error e", None, "error neurons e (equal to the residual r when tau_e = 0)"),
    "credit": var_attrs("credit g = ρe + λ", None, "composite credit g = rho*e + lambda"),
    "energy": var_attrs("energy L_ρ", None, "energy L_rho (PC: F), batch mean"),
    "loss": var_attrs("output loss ℓ", None, "output loss l = 1/2 mean_b ||y_hat - y||^2"),
    "res_norm": var_attrs("residual norm ‖r_l‖", None,
                          "RMS over samples of the residual norm ||r_l||"),
    "err_norm": var_attrs("error norm ‖e_l‖", None,
                          "RMS over samples of the error-neuron norm ||e_l||"),
    "lam_norm": var_attrs("multiplier norm ‖λ_l‖", None,
                          "RMS over samples of the multiplier norm ||lambda_l||"),
    "credit_norm": var_attrs("credit norm ‖g_l‖", None,
                             "RMS over samples of the credit norm ||rho*e_l + lambda_l||"),
    "bp_cos": var_attrs("BP cosine", None,
                        "cosine between the weight-update estimate dL/dW_l and the BP gradient"),
    "bp_relerr": var_attrs("relative error", None,
                           "relative error ||dL/dW_l - dl/dW_l|| / ||dl/dW_l|| against BP"),
    "bp_adjoint_norm": var_attrs(
        "BP adjoint norm", None,
        "RMS over samples of the BP adjoint ||dl_b/dh_l|| at the feed-forward point"),
}
TRACE_DIMS = ("time", "layer", "sample", "unit")


def _series_dims(name: str) -> tuple[str, ...]:
    if name in SERIES_LAYER:
        return ("time", "layer")
    if name in SERIES_WEIGHT:
        return ("time", "weight")
    return ("time",)


def _trace(name: str, arr: np.ndarray, result: RunResult, coords: dict):
    """A trace as the dataset takes it: (dims, data, attrs) when every layer was recorded
    (no DataArray built: the dataset is assembled in one pass), else a DataArray on the full
    `layer` axis, NaN where a layer was not recorded."""
    if result.all_layers:
        return TRACE_DIMS, arr, _attrs(name)
    da = xr.DataArray(arr, dims=TRACE_DIMS, attrs=_attrs(name),
                      coords={"layer": result.layers, "sample": coords["sample"],
                              "unit": coords["unit"]})
    # chunk first so the fill stays lazy (dask) and never materialises a full-depth array
    return da.chunk({"layer": 1}).reindex(layer=coords["layer"])


def _attrs(name: str) -> dict:
    return dict(VAR_ATTRS[name])


def build_dataset(cfg: Config, result: RunResult, command: str | None = None) -> xr.Dataset:
    n_h, n_w = result.n_hidden, len(result.grads)
    coords = {
        "time": ("time", result.steps * result.dt, var_attrs("time", "ms", "simulated time")),
        "step": ("time", result.steps, var_attrs("step", None, "integration step")),
        "layer": ("layer", np.arange(1, n_h + 1),
                  var_attrs("hidden layer l", None, "hidden layer l (1 .. L-1)")),
        "sample": ("sample", result.samples, var_attrs("sample", None, "index in the batch")),
        "unit": ("unit", result.units, var_attrs("unit", None, "unit within the layer")),
        "weight": ("weight", np.arange(1, n_w + 1),
                   var_attrs("weight matrix W_l", None, "W_l (1 .. L) feeds layer l")),
    }
    data_vars = {}
    plain = {k: v[1] for k, v in coords.items()}
    for name, arr in result.traces.items():
        data_vars[name] = _trace(name, arr, result, plain)
    for name, arr in result.series.items():
        data_vars[name] = (_series_dims(name), arr, _attrs(name))
    data_vars["bp_adjoint_norm"] = (("layer",), result.bp_adjoint_norm,
                                    _attrs("bp_adjoint_norm"))
    for i, (g, b) in enumerate(zip(result.grads, result.bp_grads), start=1):
        dims = (("output" if i == n_w else "post_unit"), ("input" if i == 1 else "pre_unit"))
        data_vars[f"grad_w{i}"] = (dims, g, var_attrs(
            f"∂L_ρ/∂W_{i}, final", None,
            f"final weight-update estimate dL_rho/dW_{i} (loss-gradient sign)"))
        data_vars[f"bp_grad_w{i}"] = (dims, b, var_attrs(f"BP gradient ∂ℓ/∂W_{i}", None,
                                                         f"BP gradient dl/dW_{i}"))
    if result.spikes is not None:
        data_vars |= spike_variables(result.spikes)
    ds = xr.Dataset(data_vars, coords=coords)
    tau_h, tau_l = cfg.rates()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = command or "ctpc.simulate() (Python API)"
    ds.attrs = {
        "Conventions": "CF-1.10",
        "title": f"ctpc {cfg.dynamics.method} run {cfg.name}".strip(),
        "history": f"{now}: {command} (ctpc {__version__})",
        "source": f"ctpc {__version__}",
        "ctpc_version": __version__,
        "backend": result.backend,
        "device": result.device,
        "method": cfg.dynamics.method,
        "scheme": cfg.integrator.scheme,
        "dt": cfg.integrator.dt,
        "dt_units": "ms",
        "tau_h": tau_h, "tau_lambda": tau_l, "tau_e": cfg.dynamics.tau_e,
        "rho": cfg.dynamics.rho,
        "eta_h": cfg.integrator.dt / tau_h, "alpha": cfg.integrator.dt / tau_l,
        "activation": cfg.network.activation,
        "depth": cfg.network.depth, "width": cfg.network.width,
        "batch_size": cfg.data.batch_size, "dtype": cfg.dtype, "seed": cfg.seed,
        "n_steps": cfg.integrator.n_steps,
        "steps_completed": result.steps_completed,
        "status": result.status,
        "wall_time_s": result.wall_time_s,
        "config": cfg.to_yaml(),
    }
    if result.diverged_at is not None:
        ds.attrs["diverged_at"] = result.diverged_at
        ds.attrs["diverged_reason"] = result.diverged_reason or "bound"
    ds.attrs.update(result.extra_attrs or {})
    return ds


# Spiking error neurons (Brian2, brian2.errors: spiking) as a CF contiguous ragged array (CF
# conventions 9.3.3 / H.2.4): instance dimension SPIKE_NEURON (one per recorded layer, sign,
# sample, unit), element dimension SPIKE; neuron k's spike times are
# spike_time[offset_k : offset_k + spike_count[k]], offset_k = sum of the counts before k.
SPIKE_NEURON, SPIKE = "spike_neuron", "spike"


def spike_variables(sp) -> dict:
    """The dataset variables of a :class:`~ctpc.results.run_result.SpikeRecord`."""
    nd = (SPIKE_NEURON,)
    return {
        SPIKE_NEURON: (nd, np.arange(len(sp.count), dtype=np.int64), var_attrs(
            "spiking error neuron", None, "index of a recorded spiking error neuron (one per "
            "layer, sign, sample, unit)") | {"cf_role": "timeseries_id"}),
        "spike_layer": (nd, sp.layer.astype(np.int64), var_attrs(
            "hidden layer l", None, "hidden layer of the spiking error neuron")),
        "spike_sign": (nd, sp.sign.astype(np.int64), var_attrs(
            "sign", None, "+1: fires for the positive part of the residual r, -1: for the "
                          "negative part")),
        "spike_sample": (nd, sp.sample.astype(np.int64), var_attrs(
            "sample", None, "index in the batch")),
        "spike_unit": (nd, sp.unit.astype(np.int64), var_attrs(
            "unit", None, "unit within the layer")),
        "spike_count": (nd, sp.count.astype(np.int64), var_attrs(
            "spike count", None, "spikes of each spiking error neuron over the run (CF "
                                 "contiguous ragged array: the count of spike_time elements)")
            | {"sample_dimension": SPIKE}),
        "spike_time": ((SPIKE,), sp.times.astype(np.float64), var_attrs(
            "spike time", "ms", "spike times, neuron by neuron (spike_count each), each "
                                "neuron's in increasing order") | {"standard_name": "time"}),
    }


def check_output_path(path: str | Path, what: str = "--out", *, create: bool = True) -> Path:
    """:func:`ctpc.config.paths.check_outputs` of a lone output file (no companions, no inputs)."""
    return check_outputs(path, what, create=create)


def _encoding(var: xr.DataArray) -> dict:
    """zlib level 1, and for a lazily loaded (dask) variable one HDF5 chunk per dask chunk:
    each chunk is then compressed and written once. With netCDF's default chunks a dask chunk
    covers parts of compressed chunks, which are read back, decompressed and recompressed at
    every write (a streamed run of 500 MB took 9x as long to write)."""
    enc = {"zlib": True, "complevel": 1}
    if var.chunks and all(c and c[0] > 0 for c in var.chunks):
        enc["chunksizes"] = tuple(c[0] for c in var.chunks)
    return enc


@contextlib.contextmanager
def _small_chunk_cache(size: int = 4 * 2 ** 20):
    """netCDF's chunk cache for the files opened meanwhile: ``size`` bytes per variable instead
    of the default 64 MB. Chunks are written whole and once, so a cache only holds memory:
    writing 500 MB of streamed records peaked 350 MB higher with the default."""
    previous = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(size, previous[1], previous[2])
    try:
        yield
    finally:
        netCDF4.set_chunk_cache(*previous)


def write_netcdf(ds: xr.Dataset, path: str | Path, progress: bool = False) -> Path:
    """Write compressed netCDF4 to ``path.tmp-PID`` and rename: an interrupted write never
    leaves a truncated file under the final name. A failed write (full disk, permissions) is an
    :class:`OutputError` that says so plainly; the temporary is removed. ``progress``: a bar on
    stderr while lazily loaded (dask) variables are written (a streamed run's records)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    # Level 1: recorded floats barely compress (random low mantissa bits), and level 4 took
    # 1.7x as long for a 5 % smaller file (68 MB of traces: 1.60 s, 29.9 MB against 0.95 s,
    # 31.4 MB; docs/benchmarks.md)
    encoding = {name: _encoding(var) for name, var in ds.data_vars.items()}
    try:
        # Local scheduler and locks: inside a Dask client (a sweep) xarray would otherwise take
        # a *distributed* lock per write, a scheduler round trip per file. A signal arriving
        # mid-write waits until the file is complete (signals.deferred): raised inside HDF5's
        # locked section it could leave the lock held and hang the next write (seen).
        bar = (ProgressBar(minimum=1.0, out=sys.stderr) if progress
               else contextlib.nullcontext())
        with signals.deferred(), dask.config.set(scheduler="synchronous"), \
                _small_chunk_cache(), bar:
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
            os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise write_failed(path, exc) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def open_results(path: str | Path) -> xr.Dataset:
    """Open a saved run, sweep or training run as an ``xarray.Dataset`` (lazily loaded).
    A missing, unreadable or non-ctpc file raises :class:`ResultsError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"no results file at {str(path)!r}")
    if path.is_dir():
        raise ResultsError(f"{str(path)!r} is a directory; give the .nc file a run or sweep "
                           "wrote")
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ResultsError(f"{str(path)!r} is not a readable netCDF file (truncated, corrupt or "
                           f"another format: {exc}); rerun the command that wrote it") from None
    # every run, training run and sweep has both; the studies' derived files (sims/) a config
    if "ctpc_version" not in ds.attrs and "config" not in ds.attrs:
        ds.close()
        raise ResultsError(f"{str(path)!r} is a netCDF file but not ctpc results (it has "
                           "neither the ctpc_version nor the config attribute that ctpc.simulate, "
                           "ctpc.train and ctpc.sweep write); open it with xarray.open_dataset "
                           "instead")
    return ds


class ResultsError(InputError):
    """A results file that cannot be opened."""
