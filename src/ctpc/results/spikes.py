"""Spike trains of a saved run's spiking error neurons (Brian2, ``brian2.errors: spiking``),
without torch or Brian2: numpy and xarray only.

The dataset stores them as a CF contiguous ragged array (:mod:`ctpc.results.dataset`):
``spike_count[spike_neuron]`` (attribute ``sample_dimension = "spike"``) says how many of the
``spike_time[spike]`` values (ms) belong to each neuron, neuron after neuron; the neuron's
``spike_layer``, ``spike_sign`` (+1 / -1), ``spike_sample`` and ``spike_unit`` label it.

    trains = spike_trains(ds, layer=1, sign=+1)      # {(layer, sign, sample, unit): times (ms)}
    counts = spike_counts(ds)                         # DataArray [layer, sign, sample, unit]
"""
from __future__ import annotations

import numpy as np
import xarray as xr

LABELS = ("spike_layer", "spike_sign", "spike_sample", "spike_unit")


def _require(ds: xr.Dataset) -> None:
    if "spike_count" not in ds.variables:
        raise ValueError("the dataset has no spikes (spike_count / spike_time): they are written "
                         "by backend brian2 with brian2.errors: spiking")


def spike_trains(ds: xr.Dataset, *, layer: int | None = None, sign: int | None = None,
                 sample: int | None = None, unit: int | None = None
                 ) -> dict[tuple[int, int, int, int], np.ndarray]:
    """Each recorded spiking error neuron's spike times (ms, increasing), keyed by
    (layer, sign, sample, unit); ``layer``, ``sign`` (+1 / -1), ``sample``, ``unit`` restrict
    the neurons returned (None: all recorded). Neurons without spikes map to an empty array."""
    _require(ds)
    count = np.asarray(ds["spike_count"].values, dtype=np.int64)
    times = np.asarray(ds["spike_time"].values, dtype=np.float64)
    if count.sum() != times.size:
        raise ValueError(f"spike_count sums to {count.sum()} but spike_time has {times.size} "
                         "values: not a contiguous ragged array")
    offsets = np.concatenate([[0], np.cumsum(count)])
    labels = np.stack([np.asarray(ds[k].values, dtype=np.int64) for k in LABELS], axis=1)
    keep = np.ones(len(count), dtype=bool)
    for column, want in enumerate((layer, sign, sample, unit)):
        if want is not None:
            keep &= labels[:, column] == want
    return {tuple(int(v) for v in labels[k]): times[offsets[k]:offsets[k + 1]]
            for k in np.flatnonzero(keep)}


def spike_counts(ds: xr.Dataset) -> xr.DataArray:
    """Spike count of every recorded spiking error neuron as a DataArray over
    (layer, sign, sample, unit); NaN where a combination was not recorded."""
    _require(ds)
    labels = {k: np.asarray(ds[k].values, dtype=np.int64) for k in LABELS}
    axes = {k: np.unique(v) for k, v in labels.items()}
    out = np.full(tuple(len(a) for a in axes.values()), np.nan)
    where = tuple(np.searchsorted(axes[k], labels[k]) for k in LABELS)
    out[where] = np.asarray(ds["spike_count"].values, dtype=float)
    return xr.DataArray(out, dims=("layer", "sign", "sample", "unit"),
                        coords={d: axes[k] for d, k in zip(("layer", "sign", "sample", "unit"),
                                                           LABELS)},
                        attrs={"long_name": "spike count",
                               "description": "spikes of each spiking error neuron over the run"})


def firing_rates(ds: xr.Dataset) -> xr.DataArray:
    """Mean firing rate (Hz) of every recorded spiking error neuron over the run, as
    :func:`spike_counts` divided by the simulated time (steps_completed x dt)."""
    duration_ms = float(ds.attrs["steps_completed"]) * float(ds.attrs["dt"])
    rates = spike_counts(ds) / (duration_ms * 1e-3)
    return rates.assign_attrs(long_name="firing rate", units="Hz",
                              description="mean firing rate over the run")
