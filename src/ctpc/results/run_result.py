"""The backend-neutral result of one run (host numpy arrays), turned into the dataset by
:mod:`ctpc.results.dataset`. Every backend fills exactly this (through
:meth:`ctpc.sim.recording.Recorder.results`), so the saved schema cannot drift. No torch here: reading
results never imports it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Names of the recorded series, by the dimensions they have besides time.
SERIES_LAYER = ("res_norm", "err_norm", "lam_norm", "credit_norm")   # [time, layer]
SERIES_WEIGHT = ("bp_cos", "bp_relerr")                             # [time, weight]
SERIES_SCALAR = ("energy", "loss")                                   # [time]


@dataclass
class SpikeRecord:
    """Spikes of the recorded spiking error neurons (Brian2, ``brian2.errors: spiking``) as a
    contiguous ragged array: neuron k's spike times are ``times[offset_k : offset_k +
    count[k]]``, offset_k = count[:k].sum(), each neuron's in increasing order. One neuron per
    (layer, sign, sample, unit) recorded, those without spikes included (count 0)."""
    layer: np.ndarray                 # [K] 1-based hidden layer
    sign: np.ndarray                  # [K] +1 (fires for r > 0) | -1 (for r < 0)
    sample: np.ndarray                # [K] batch index
    unit: np.ndarray                  # [K] unit within the layer
    count: np.ndarray                 # [K] spikes of each neuron
    times: np.ndarray                 # [count.sum()] spike times, ms


@dataclass
class RunResult:
    steps: np.ndarray                 # [T] recorded step numbers
    dt: float                         # ms
    traces: dict[str, np.ndarray]     # var -> [T, layers_rec, samples, units]
    series: dict[str, np.ndarray]     # energy/loss [T], *_norm [T, H], bp_cos/bp_relerr [T, L]
    grads: list[np.ndarray]           # final dL/dW_1..W_L estimates, [out, in]
    bp_grads: list[np.ndarray]        # dl/dW_1..W_L by BP
    bp_adjoint_norm: np.ndarray       # [H] RMS over batch of ||dl_b/dh_l|| at feed-forward
    layers: np.ndarray                # 1-based hidden layers of the traces
    samples: np.ndarray
    units: np.ndarray
    all_layers: bool
    n_hidden: int
    status: str                       # "ok" | "diverged"
    diverged_at: float | None         # ms
    steps_completed: int
    backend: str
    device: str
    wall_time_s: float
    extra_attrs: dict | None = None   # backend-specific provenance (e.g. Brian2 codegen target)
    diverged_reason: str | None = None   # "non-finite" | "bound" | "growth" (diverged runs)
    spikes: SpikeRecord | None = None    # Brian2 spiking error neurons (brian2.errors: spiking)
