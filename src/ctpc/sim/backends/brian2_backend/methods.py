"""Brian2 state-update methods for the config's names.

``euler``, ``rk2`` (midpoint) and ``rk4`` are Brian2's built-ins. ``heun`` is ctpc's heun, the
explicit trapezoid rule, written in Brian2's own ExplicitStateUpdater language: Brian2's built-in
'heun' is the stochastic Heun method, whose deterministic part is a single Euler step.
"""
from __future__ import annotations

import brian2 as b2

TRAPEZOID = """
k = dt * f(x, t)
x_new = x + (k + dt * f(x + k, t + dt)) / 2
"""

_trapezoid = None


def state_update_method(name: str):
    global _trapezoid
    if name == "heun":
        if _trapezoid is None:
            _trapezoid = b2.ExplicitStateUpdater(TRAPEZOID)
        return _trapezoid
    return name


def method_description(name: str) -> str:
    if name == "heun":
        return "explicit trapezoid (Brian2 ExplicitStateUpdater:" + TRAPEZOID.replace(
            "\n", " ").rstrip() + ")"
    return f"Brian2 built-in {name!r}"
