"""scheme: discrete is the paper's algorithm (spec section 3) to float64 round-off, and
semi_implicit with dt = 1, tau_h = 1/eta_h, tau_lambda = 1/alpha is the same map."""
import itertools

import numpy as np
import pytest
import torch

import ctpc
from ctpc.data import load_batch
from ctpc.core.network import init_weights

from conftest import small_config
from reference_numpy import Net, discrete

ETA, ALPHA, RHO, T = 0.2, 0.8, 1.3, 6
# Widths differ on purpose (D != N != O) so a transposed weight cannot go unnoticed.
NET = {"width": 4, "depth": 4, "input_dim": 5, "output_dim": 3}


def run_ctpc(activation, method, timing, inner):
    cfg = small_config(
        network={**NET, "activation": activation},
        dynamics={"method": method, "rho": RHO, "state_lr": ETA, "alpha": ALPHA},
        integrator={"scheme": "discrete", "dt": 1.0, "steps": None, "budget": T,
                    "inner_steps": inner, "weight_credit_timing": timing})
    return ctpc.load_config(cfg), ctpc.simulate(cfg)


def reference(cfg, activation, method, timing, inner):
    net = Net(init_weights(cfg), activation)
    xs, ys = load_batch(cfg.data, cfg.network, cfg.seed)
    return net, discrete(net, xs, ys, method=method, eta=ETA, alpha=ALPHA, rho=RHO, T=T,
                         inner=inner, timing=timing)


@pytest.mark.parametrize("activation,method,timing,inner", list(itertools.product(
    ["linear", "tanh", "relu"], ["pc", "pcalm"], ["pre_dual", "post_dual"], [1, 2])))
def test_discrete_matches_numpy_reference(activation, method, timing, inner):
    cfg, ds = run_ctpc(activation, method, timing, inner)
    net, (h_ref, lam_ref, gw_ref) = reference(cfg, activation, method, timing, inner)
    last = ds.isel(time=-1)
    # ctpc stores [layer, sample, unit]; the reference [sample, layer, unit].
    h = last.h.transpose("sample", "layer", "unit").values
    lam = last.lam.transpose("sample", "layer", "unit").values
    assert int(ds.step[-1]) == T
    # 1e-10 (the bound) on O(1) quantities after a few dozen float64 operations
    # each: round-off is ~1e-15, so anything above 1e-10 is a real difference.
    assert np.abs(h - h_ref).max() <= 1e-10
    assert np.abs(lam - lam_ref).max() <= 1e-10
    for i, g in enumerate(gw_ref, start=1):
        assert np.abs(ds[f"grad_w{i}"].values - g).max() <= 1e-10, f"grad_w{i}"
    if method == "pc":
        assert np.all(lam == 0.0)
    else:
        assert np.abs(lam).max() > 1e-3   # the multipliers did move: the test has teeth


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
def test_reference_gradients_agree_with_autograd(activation):
    """Guard the guard: the numpy reference's hand-written gradients equal autograd of the
    spec's energy, so the discrete comparison above checks the mathematics, not a shared typo."""
    cfg = ctpc.load_config(small_config(network={**NET, "activation": activation}))
    ws = init_weights(cfg)
    net = Net(ws, activation)
    xs, ys = load_batch(cfg.data, cfg.network, cfg.seed)
    rng = np.random.default_rng(3)
    hs = np.array([net.feedforward(x) for x in xs]) + 0.3 * rng.standard_normal((3, 3, 4))
    lams = 0.5 * rng.standard_normal(hs.shape)

    tw = [torch.tensor(w, requires_grad=True) for w in ws]
    th = torch.tensor(hs, requires_grad=True)
    phi = {"linear": lambda t: t, "tanh": torch.tanh, "relu": torch.relu}[activation]
    energy = 0.0
    for b in range(len(xs)):
        x, y, h = torch.tensor(xs[b]), torch.tensor(ys[b]), th[b]
        preds = [net.s_in * tw[0] @ x] + [h[l - 1] + net.s_mid * tw[l] @ phi(h[l - 1])
                                          for l in range(1, net.H)]
        r = torch.stack([h[l] - preds[l] for l in range(net.H)])
        y_hat = net.s_out * tw[-1] @ phi(h[-1])
        energy = energy + 0.5 * ((y_hat - y) ** 2).sum() + (torch.tensor(lams[b]) * r).sum() \
            + 0.5 * RHO * (r ** 2).sum()
    energy.backward()
    for b in range(len(xs)):
        np.testing.assert_allclose(net.grad_h(hs[b], lams[b], xs[b], ys[b], RHO),
                                   th.grad[b].numpy(), rtol=0, atol=1e-12)
    for w_ref, w in zip(net.grad_w(hs, lams, xs, ys, RHO), tw):
        np.testing.assert_allclose(w_ref, w.grad.numpy() / len(xs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
def test_semi_implicit_equals_discrete(activation):
    """One semi-implicit step of size dt = 1 is one paper iteration (eta_h = 1/tau_h,
    alpha = 1/tau_lambda). The discrete run's final step is primal only (pre_dual) or
    primal + dual (post_dual); post_dual matches semi_implicit's last step exactly."""
    common = dict(network={**NET, "activation": activation})
    semi = ctpc.simulate(small_config(
        **common, dynamics={"rho": RHO, "tau_h": 1 / ETA, "tau_lambda": 1 / ALPHA},
        integrator={"scheme": "semi_implicit", "dt": 1.0, "steps": T}))
    for timing in ["pre_dual", "post_dual"]:
        disc = ctpc.simulate(small_config(
            **common, dynamics={"rho": RHO, "tau_h": 1 / ETA, "tau_lambda": 1 / ALPHA},
            integrator={"scheme": "discrete", "dt": 1.0, "steps": None, "budget": T,
                        "weight_credit_timing": timing}))
        np.testing.assert_array_equal(semi.step.values, disc.step.values)
        np.testing.assert_allclose(semi.h.values, disc.h.values, rtol=0, atol=1e-12)
        # lambda agrees at every step the two maps share (all but the last for pre_dual).
        upto = T + 1 if timing == "post_dual" else T
        np.testing.assert_allclose(semi.lam.values[:upto], disc.lam.values[:upto], rtol=0,
                                   atol=1e-12)
        if timing == "post_dual":
            for i in range(1, NET["depth"] + 1):
                np.testing.assert_allclose(semi[f"grad_w{i}"], disc[f"grad_w{i}"], atol=1e-12)
        else:
            assert np.abs(semi.lam.values[-1] - disc.lam.values[-1]).max() > 1e-6
