"""The facts about each time-stepping scheme, declared once.

Config validation, the torch solvers, the stability analysis, the Brian2 backend, the tests and
the documentation's scheme table (``docs/reference/schemes.md``, generated from this table by
``docs/hooks.py`` when the site is built) all read this table; nothing restates it.

* ``family`` ``"explicit_rk"``: an explicit Runge-Kutta step of the full right-hand side given by
  a Butcher tableau (every population sees the old state: Jacobi order).
* ``family`` ``"gauss_seidel"``: activity first, then the error and multiplier neurons from the
  *new* residual (spec section 4). ``discrete`` is the paper's algorithm (spec section 3).
* ``order``: the global convergence order in ``dt`` (``None`` for ``discrete``, which has a fixed
  step: it is an algorithm, not a discretisation to refine).
* ``brian2_method``: the Brian2 state-update method that runs the scheme (``None`` for the
  Gauss-Seidel family, which Brian2 runs as a fixed schedule of Euler updates).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tableau:
    """Explicit Butcher tableau: stage rows ``a`` (row i has i entries) and weights ``b``."""
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]


@dataclass(frozen=True)
class SchemeInfo:
    name: str
    family: str                      # "explicit_rk" | "gauss_seidel"
    order: int | None
    description: str
    tableau: Tableau | None = None   # explicit_rk only
    brian2_method: str | None = None

    @property
    def gauss_seidel(self) -> bool:
        return self.family == "gauss_seidel"

    @property
    def stages(self) -> int:
        """Right-hand-side evaluations per step (Gauss-Seidel: one network pass per primal
        step)."""
        return len(self.tableau.b) if self.tableau else 1


SCHEMES: dict[str, SchemeInfo] = {s.name: s for s in (
    SchemeInfo("euler", "explicit_rk", 1,
               "explicit (Jacobi) Euler: every population sees the old state",
               Tableau((), (1.0,)), "euler"),
    SchemeInfo("semi_implicit", "gauss_seidel", 1,
               "Gauss-Seidel Euler: h first, then e and lambda from the new residual"),
    SchemeInfo("heun", "explicit_rk", 2, "explicit trapezoid (RK2)",
               Tableau(((1.0,),), (0.5, 0.5)), "heun"),
    SchemeInfo("rk4", "explicit_rk", 4, "classical Runge-Kutta",
               Tableau(((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
               "rk4"),
    SchemeInfo("discrete", "gauss_seidel", None,
               "the paper's algorithm (spec 3): inner_steps primal steps per dual step, a final "
               "primal-only step, weight credit pre_dual or post_dual"),
)}
SCHEME_NAMES: tuple[str, ...] = tuple(SCHEMES)
EXPLICIT_RK: tuple[str, ...] = tuple(n for n, s in SCHEMES.items() if s.family == "explicit_rk")
GAUSS_SEIDEL: tuple[str, ...] = tuple(n for n, s in SCHEMES.items() if s.gauss_seidel)


def scheme(name: str) -> SchemeInfo:
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown integrator.scheme {name!r}; accepted: "
                         f"{', '.join(SCHEME_NAMES)}") from None
