"""Brian2 state-update methods for the config's names.

``euler``, ``rk2`` (midpoint) and ``rk4`` are Brian2's built-ins. ``heun`` is ctpc's heun, the
explicit trapezoid rule, written in Brian2's own ExplicitStateUpdater language: Brian2's built-in
'heun' is the stochastic Heun method, whose deterministic part is a single Euler step.

With noise (``dynamics.noise``) ``heun`` is Brian2's built-in stochastic Heun: the trapezoid
cannot be written as a Brian2 stochastic updater (its output line may call ``f`` once only).
Brian2's heun is a Stratonovich scheme; for ctpc's additive noise (g constant) Stratonovich and
Ito coincide and it reduces to Euler-Maruyama, x + dt f(x) + sigma dW: the noisy heun run on
Brian2 is the noisy euler run.
"""
from __future__ import annotations

import brian2 as b2

TRAPEZOID = """
k = dt * f(x, t)
x_new = x + (k + dt * f(x + k, t + dt)) / 2
"""

_trapezoid = None


def state_update_method(name: str, stochastic: bool = False):
    """The Brian2 state updater for a method name; ``stochastic``: the equations carry noise."""
    global _trapezoid
    if name == "heun" and not stochastic:
        if _trapezoid is None:
            _trapezoid = b2.ExplicitStateUpdater(TRAPEZOID)
        return _trapezoid
    return name


def method_description(name: str, stochastic: bool = False) -> str:
    if stochastic:
        return (f"Brian2 built-in {name!r} with additive noise (Ito; "
                + ("Euler-Maruyama)" if name == "euler" else
                   "stochastic Heun, for additive noise Euler-Maruyama)"))
    if name == "heun":
        return "explicit trapezoid (Brian2 ExplicitStateUpdater:" + TRAPEZOID.replace(
            "\n", " ").rstrip() + ")"
    return f"Brian2 built-in {name!r}"
