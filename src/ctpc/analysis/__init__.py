"""Analysis of saved runs and sweeps: pure functions over ``xarray.Dataset`` whose results are
small Datasets with units in their attributes (convert with ``.to_dataframe()``).

    import ctpc
    from ctpc import analysis
    ds = ctpc.open_results("runs/pcalm_deep.nc")
    analysis.credit_arrival(ds, 0.5, "bp_adjoint")      # per layer, ms
    analysis.wavefront_speed(ds)                         # layers / ms vs 1/sqrt(tau_h tau_lambda)
    analysis.alignment_times(ds, 0.99)                   # per weight matrix
    analysis.credit_distribution(ds)                     # spread over layers vs BP
    sweep = ctpc.open_results("runs/propagation/pcalm.nc")
    analysis.arrival_scaling(sweep)                      # t_arrival ~ L^p at the input layer

Every function also takes a combined sweep dataset and returns its result over the sweep's
dimensions. Definitions (arrival, references, interpolation) are in the module docstrings of
:mod:`ctpc.analysis.propagation` and :mod:`ctpc.analysis.crossing`.
"""
from ctpc.analysis.alignment import alignment_times
from ctpc.analysis.crossing import first_crossing, last_finite, settle_crossing
from ctpc.analysis.propagation import (PowerLaw, arrival_scaling, credit_arrival,
    credit_distribution, fit_power_law, wavefront_speed)

__all__ = ["PowerLaw", "alignment_times", "arrival_scaling", "credit_arrival",
           "credit_distribution", "first_crossing", "fit_power_law", "last_finite",
           "settle_crossing", "wavefront_speed"]
