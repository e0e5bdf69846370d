"""The network's hand-written derivatives equal torch.func / autograd of the spec's energy
(section 2), written here independently: per replica, per layer, per sample, no stacking.

    r_l = h_l - pred_l,   E_b = 1/2 |y_hat_b - y_b|^2 + sum_l [lam_l . r_l + rho/2 |r_l|^2]

activity gradient = dE_b/dh_b (per sample), weight gradient = d(mean_b E_b)/dW, constraint
Jacobian A = dr/dh (jvp and vjp). Two replicas with different weights, D != N != O."""
import math

import pytest
import torch
from torch.func import grad, jvp, vjp

from ctpc.core.dynamics import Dynamics, Rates
from ctpc.core.network import Network, Weights

D, N, O, L, B, R, RHO = 5, 4, 3, 5, 3, 2, 1.3
PHI = {"linear": lambda t: t, "tanh": torch.tanh, "relu": torch.relu}
dt = torch.float64


def setup(activation):
    gen = torch.Generator().manual_seed(11)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dt)
    mats = [[rnd(N, D)] + [rnd(N, N) for _ in range(L - 2)] + [rnd(O, N)] for _ in range(R)]
    w = Weights.stack([[m.numpy() for m in ms] for ms in mats], "cpu", dt)
    x, y = rnd(R, B, D), rnd(R, B, O)
    net = Network(D, N, L, O, activation, "cpu", dt)
    h = net.feedforward(w, x) + 0.4 * rnd(L - 1, R, B, N)
    lam = 0.5 * rnd(L - 1, R, B, N)
    return net, w, mats, x, y, h, lam


def residuals_ref(mats, x, h, phi):
    """r of ONE replica and sample: mats [W_1..W_L], x [D], h [H, N] -> [H, N]."""
    s_mid = 1 / math.sqrt(N * L)
    preds = [mats[0] @ x / math.sqrt(D)]
    preds += [h[l - 1] + s_mid * mats[l] @ phi(h[l - 1]) for l in range(1, L - 1)]
    return h - torch.stack(preds)


def energy_ref(mats, x, y, h, lam, phi):
    """E_b of ONE sample (spec section 2)."""
    r = residuals_ref(mats, x, h, phi)
    y_hat = mats[-1] @ phi(h[-1]) / N
    return 0.5 * (y_hat - y).square().sum() + (lam * r).sum() + 0.5 * RHO * r.square().sum()


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
def test_activity_gradient_is_the_energy_gradient(activation):
    net, w, mats, x, y, h, lam = setup(activation)
    phi = PHI[activation]
    a = net.phi(h)
    r = net.residuals(w, h, net.input_drive(w, x))
    g = RHO * r.r + lam
    ours = net.activity_gradient(w, h, a, r.y_hat, g, y)
    for i in range(R):
        for b in range(B):
            ref = grad(energy_ref, argnums=3)(mats[i], x[i, b], y[i, b], h[:, i, b], lam[:, i, b],
                                              phi)
            torch.testing.assert_close(ours[:, i, b], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
def test_constraint_jvp_and_vjp_are_dr_dh(activation):
    net, w, mats, x, y, h, lam = setup(activation)
    phi = PHI[activation]
    v = torch.randn(h.shape, generator=torch.Generator().manual_seed(5), dtype=dt)
    d = net.dphi(h, net.phi(h))
    Av, ATv = net.constraint_jvp(w, v, d), net.constraint_vjp(w, v, d)
    for i in range(R):
        for b in range(B):
            f = lambda hh: residuals_ref(mats[i], x[i, b], hh, phi)
            _, ref_jvp = jvp(f, (h[:, i, b],), (v[:, i, b],))
            _, pull = vjp(f, h[:, i, b])
            torch.testing.assert_close(Av[:, i, b], ref_jvp, rtol=0, atol=1e-12)
            torch.testing.assert_close(ATv[:, i, b], pull(v[:, i, b])[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
def test_weight_gradients_are_the_energy_gradient(activation):
    net, w, mats, x, y, h, lam = setup(activation)
    phi = PHI[activation]
    dyn = Dynamics(net, leaky=False)
    p = dyn.params(w, x, y, Rates(rho=RHO, k_h=1.0, k_lam=1.0, k_e=0.0))
    S = torch.stack([h, lam])
    ours = dyn.weight_gradients(S, dyn.residuals(S, p), p)
    for i in range(R):
        leaves = [m.clone().requires_grad_() for m in mats[i]]
        mean_energy = sum(energy_ref(leaves, x[i, b], y[i, b], h[:, i, b], lam[:, i, b], phi)
                          for b in range(B)) / B
        refs = torch.autograd.grad(mean_energy, leaves)
        for got, ref in zip(ours.matrices(i), refs):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_params_refuse_weights_changed_in_place():
    """Params carry a drive derived from W_1: an in-place optimiser step after building them
    is detected, never silently mixed (stale predictions with fresh gradients)."""
    net, w, mats, x, y, h, lam = setup("tanh")
    from ctpc.core.solvers import make_solver
    dyn = Dynamics(net, leaky=False)
    p = dyn.params(w, x, y, Rates(rho=RHO, k_h=0.25, k_lam=1.0, k_e=0.0))
    solver = make_solver(dyn, "discrete")
    solver.init(dyn.initial_state(p), p)              # fine
    with torch.no_grad():
        w.w_in.add_(0.1)                              # what optimiser.step() does
    with pytest.raises(RuntimeError, match="stale"):
        solver.init(dyn.initial_state(p), p)
    fresh = dyn.params(w, x, y, p.rates)              # rebuilt: fine again
    solver.init(dyn.initial_state(fresh), fresh)
    torch.testing.assert_close(fresh.drive, net.input_drive(w, x))
