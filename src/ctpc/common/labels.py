"""Variable attributes of the result datasets, as plots read them.

xarray labels an axis ``long_name [units]``, so every variable of a run, training or sweep
dataset gets a SHORT ``long_name`` (at most ``MAX_LONG_NAME`` characters: "activity h",
"BP cosine"), ``units`` only where it has units (a dimensionless variable has no ``units``
attribute, so no axis reads "[1]"), and the full sentence, where one helps, in ``description``.
Pure Python: the readers of results (``ctpc.results.dataset``, ``ctpc.analysis``, ``ctpc.analysis.plotting``) use it
without torch.
"""
from __future__ import annotations

MAX_LONG_NAME = 30
DIMENSIONLESS = (None, "", "1")


def var_attrs(long_name: str, units: str | None = None, description: str | None = None) -> dict:
    """CF attributes of one variable: ``long_name``, ``units`` unless dimensionless, and
    ``description`` if given."""
    attrs = {"long_name": long_name}
    if units not in DIMENSIONLESS:
        attrs["units"] = units
    if description:
        attrs["description"] = description
    return attrs


# Swept config keys that have a short name and units of their own (else the key is the name).
SWEEP_KEYS = {
    "integrator.dt": ("dt", "ms"), "integrator.t_end": ("t_end", "ms"),
    "integrator.steps": ("steps", None), "integrator.budget": ("budget T", None),
    "integrator.scheme": ("scheme", None), "dynamics.method": ("method", None),
    "dynamics.tau_h": ("τ_h", "ms"), "dynamics.tau_lambda": ("τ_λ", "ms"),
    "dynamics.tau_e": ("τ_e", "ms"), "dynamics.rho": ("penalty ρ", None),
    "dynamics.state_lr": ("η_h", None), "dynamics.alpha": ("α", None),
    "network.depth": ("depth L", None), "network.width": ("width N", None),
    "network.activation": ("activation", None), "data.batch_size": ("batch size B", None),
    "training.lr": ("learning rate", None), "training.tau_w": ("τ_W", "ms"),
}


def sweep_key_attrs(key: str) -> dict:
    """Attributes of the coordinate of a swept config key (e.g. ``integrator.dt``)."""
    name, units = SWEEP_KEYS.get(key, (key, None))
    if len(name) > MAX_LONG_NAME:
        name = key.rsplit(".", 1)[-1][:MAX_LONG_NAME]
    return var_attrs(name, units, f"swept config key {key}")
