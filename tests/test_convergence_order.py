"""Explicit schemes converge at their textbook order on the full nonlinear, leaky-error system."""
import numpy as np
import pytest

import ctpc

from conftest import small_config

T_END = 4.0


def final_state(scheme, dt):
    ds = ctpc.simulate(small_config(
        network={"activation": "tanh"},
        dynamics={"method": "pcalm", "tau_h": 1.0, "tau_lambda": 2.0, "tau_e": 0.5},
        integrator={"scheme": scheme, "dt": dt, "steps": None, "t_end": T_END},
        record={"every": 10**6}))
    assert float(ds.time[-1]) == pytest.approx(T_END)
    return np.concatenate([ds[v].isel(time=-1).values.ravel() for v in ("h", "lam", "err")])


@pytest.fixture(scope="module")
def reference():
    # rk4 at dt = 0.1/64: its error (~1e-13) is far below the coarsest tested errors.
    return final_state("rk4", 0.1 / 64)


@pytest.mark.parametrize("scheme,order,dts", [
    ("euler", 1, [0.04, 0.02, 0.01, 0.005]),
    ("heun", 2, [0.04, 0.02, 0.01, 0.005]),
    ("rk4", 4, [0.2, 0.1, 0.05, 0.025]),
])
def test_convergence_order(reference, scheme, order, dts):
    errors = [np.abs(final_state(scheme, dt) - reference).max() for dt in dts]
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    # The dts are in the asymptotic regime (errors halve/quarter/... cleanly), where the
    # next-order term shifts a fitted slope by a few hundredths; 0.15 separates orders safely.
    assert abs(slope - order) < 0.15, (scheme, errors, slope)
