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
