"""Training updates are exact (float64, independent references written here or in
reference_numpy.py): one PC / PC-ALM update with Adam equals slow numpy inference + read-out +
Adam; BP equals plain autograd + torch.optim.Adam; continuous plasticity equals a numpy
integration of tau_W dW/dt = -dL/dW with the neurons."""
import math

import numpy as np
import pytest
import torch

import ctpc
from ctpc.build.objects import build_model
from ctpc.training.setup import make_rule

from conftest import small_config
from reference_numpy import Net, discrete

ETA, ALPHA, RHO, T, LR = 0.2, 0.8, 1.3, 6, 0.01
NET = {"width": 4, "depth": 4, "input_dim": 5, "output_dim": 3}


def numpy_adam(ws, grads, state, lr, t):
    """torch.optim.Adam's update, typed from its documentation (betas 0.9, 0.999, eps 1e-8)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    out = []
    for i, (w, g) in enumerate(zip(ws, grads)):
        m, v = state.get(i, (np.zeros_like(w), np.zeros_like(w)))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        state[i] = (m, v)
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        out.append(w - lr * m_hat / (np.sqrt(v_hat) + eps))
    return out


def batches(n, cfg, seed=3):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((3, 5)), np.eye(3)[rng.integers(0, 3, 3)]) for _ in range(n)]


def torch_batch(model, x, y):
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=model.x.device)[None]
    return as_t(x), as_t(y)


@pytest.mark.parametrize("method", ["pc", "pcalm"])
@pytest.mark.parametrize("timing", ["pre_dual", "post_dual"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_pc_pcalm_updates_with_adam_equal_numpy(method, timing, activation):
    cfg = ctpc.load_config(small_config(
        network={**NET, "activation": activation},
        dynamics={"method": method, "rho": RHO, "state_lr": ETA, "alpha": ALPHA},
        integrator={"scheme": "discrete", "dt": 1.0, "steps": None, "budget": T,
                    "weight_credit_timing": timing}))
    model = build_model(cfg)
    rule = make_rule(cfg, model)
    opt = torch.optim.Adam(list(model.weights.tensors), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    ws = [w.cpu().numpy().copy() for w in model.weights.matrices(0)]
    state = {}
    for t, (x, y) in enumerate(batches(3, cfg), start=1):
        with torch.no_grad():
            grads, _ = rule(model.weights, *torch_batch(model, x, y))
            for p, g in zip(model.weights.tensors, grads.tensors):
                p.grad = g
            opt.step()
        _, _, gw = discrete(Net(ws, activation), x, y, method=method, eta=ETA, alpha=ALPHA,
                            rho=RHO, T=T, inner=1, timing=timing)
        assert max(np.abs(g).max() for g in gw) > 1e-3       # the gradients are not trivial
        ws = numpy_adam(ws, gw, state, LR, t)
        for got, ref in zip(model.weights.matrices(0), ws):
            # float64 round-off through inference and Adam's sqrt/division: ~1e-15
            np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=0, atol=1e-10)


def test_bp_rule_with_adam_equals_autograd_and_torch_adam():
    cfg = ctpc.load_config(small_config(network={**NET, "activation": "tanh"},
                                        dynamics={"method": "bp"}))
    model = build_model(cfg)
    rule = make_rule(cfg, model)
    opt = torch.optim.Adam(list(model.weights.tensors), lr=LR)
    # the reference: separate leaf tensors, a plain forward pass typed from the spec, autograd
    ref = [w.clone().requires_grad_() for w in model.weights.matrices(0)]
    ref_opt = torch.optim.Adam(ref, lr=LR)
    D, N, L = 5, 4, 4
    for x, y in batches(4, cfg):
        xt, yt = torch_batch(model, x, y)
        with torch.no_grad():
            grads, stats = rule(model.weights, xt, yt)
            for p, g in zip(model.weights.tensors, grads.tensors):
                p.grad = g
            opt.step()
        h = ref[0] @ xt[0].T / math.sqrt(D)                  # [N, B]  (on the model's device)
        for w in ref[1:-1]:
            h = h + w @ torch.tanh(h) / math.sqrt(N * L)
        y_hat = ref[-1] @ torch.tanh(h) / N
        loss = 0.5 * (y_hat.T - yt[0]).square().sum(1).mean()
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        assert float(stats.loss[0]) == pytest.approx(float(loss.detach()), rel=1e-12)
        for got, want in zip(model.weights.matrices(0), ref):
            torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scheme", ["euler", "semi_implicit", "heun"])
def test_continuous_plasticity_equals_numpy_reference(scheme):
    """tau_W dW/dt = -dL/dW integrated with the neurons (spec section 4), checked against a
    slow numpy integration of the joint system written here from the spec."""
    tau_w, dt, n = 5.0, 0.5, 12
    cfg = ctpc.load_config(small_config(
        network={**NET, "activation": "tanh"},
        dynamics={"method": "pcalm", "rho": RHO, "tau_h": 2.0, "tau_lambda": 1.5},
        integrator={"scheme": scheme, "dt": dt, "steps": n},
        training={"plasticity": "continuous", "tau_w": tau_w}))
    model = build_model(cfg)
    rule = make_rule(cfg, model)
    ws = [w.cpu().numpy().copy() for w in model.weights.matrices(0)]
    (x, y), = batches(1, cfg)
    with torch.no_grad():
        w_new, _ = rule.present(model.weights, *torch_batch(model, x, y))
    ref = plastic_reference(ws, x, y, scheme, dt, n, tau_h=2.0, tau_l=1.5, tau_w=tau_w)
    moved = max(np.abs(a - b).max() for a, b in zip(ref, ws))
    assert moved > 1e-3                                       # the weights really moved
    for got, want in zip(w_new.matrices(0), ref):
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-12)


def plastic_reference(ws, xs, ys, scheme, dt, n, *, tau_h, tau_l, tau_w):
    """Joint (h, lam, W) integration, sample by sample, from the spec: tau_h h' = -dL/dh,
    tau_l lam' = r, tau_W W' = -dL/dW (batch mean). Gauss-Seidel: h, then lam with the new
    residual, then W from the read-out at the new state."""
    net = Net(ws, "tanh")
    hs = np.array([net.feedforward(x) for x in xs])
    lams = np.zeros_like(hs)

    def f(hs, lams, ws):
        net = Net(ws, "tanh")
        dh = np.array([-net.grad_h(h, l, x, y, RHO) / tau_h
                       for h, l, x, y in zip(hs, lams, xs, ys)])
        dl = np.array([net.residual(h, x) / tau_l for h, x in zip(hs, xs)])
        dw = [-g / tau_w for g in net.grad_w(hs, lams, xs, ys, RHO)]
        return dh, dl, dw

    for _ in range(n):
        if scheme == "euler":
            dh, dl, dw = f(hs, lams, ws)
            hs, lams, ws = hs + dt * dh, lams + dt * dl, [w + dt * d for w, d in zip(ws, dw)]
        elif scheme == "heun":
            k1 = f(hs, lams, ws)
            k2 = f(hs + dt * k1[0], lams + dt * k1[1], [w + dt * d for w, d in zip(ws, k1[2])])
            hs = hs + dt / 2 * (k1[0] + k2[0])
            lams = lams + dt / 2 * (k1[1] + k2[1])
            ws = [w + dt / 2 * (a + b) for w, a, b in zip(ws, k1[2], k2[2])]
        else:   # semi_implicit: h, then lam from the new residual, then W at the new state
            net = Net(ws, "tanh")
            hs = np.array([h - dt / tau_h * net.grad_h(h, l, x, y, RHO)
                           for h, l, x, y in zip(hs, lams, xs, ys)])
            lams = lams + dt / tau_l * np.array([net.residual(h, x) for h, x in zip(hs, xs)])
            ws = [w - dt / tau_w * g for w, g in zip(ws, net.grad_w(hs, lams, xs, ys, RHO))]
    return ws


def test_linear_pcalm_trains_like_bp_update_by_update():
    """Spec 5.1 carried through learning: with a budget long enough for inference to converge,
    PC-ALM's read-out IS the BP gradient, so Adam follows BP's trajectory update by update."""
    base = small_config(network={"width": 5, "depth": 5, "activation": "linear",
                                 "input_dim": 6, "output_dim": 3},
                        data={"batch_size": 4},
                        dynamics={"method": "pcalm", "state_lr": "auto", "alpha": 1.0},
                        # a budget long enough for the read-out to converge to round-off at
                        # every update (the weights move, so the slowest mode moves too; seen:
                        # 3000 steps reach 1e-15 at the start but only 5e-11 by update 20)
                        integrator={"scheme": "discrete", "dt": 1.0, "steps": None,
                                    "budget": 5000})
    runs = {}
    for method in ("bp", "pcalm"):
        cfg = ctpc.load_config(base, {"dynamics.method": method})
        model = build_model(cfg)
        runs[method] = (model, make_rule(cfg, model),
                        torch.optim.Adam(list(model.weights.tensors), lr=0.01))
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(20):
        dev = runs["bp"][0].x.device
        x = torch.as_tensor(rng.standard_normal((1, 4, 6)), device=dev)
        y = torch.as_tensor(np.eye(3)[rng.integers(0, 3, 4)], device=dev)[None]
        for model, rule, opt in runs.values():
            with torch.no_grad():
                grads, _ = rule(model.weights, x, y)
                for p, g in zip(model.weights.tensors, grads.tensors):
                    p.grad = g
                opt.step()
        for a, b in zip(runs["bp"][0].weights.tensors, runs["pcalm"][0].weights.tensors):
            worst = max(worst, float((a - b).abs().max()))
    moved = float((runs["bp"][0].weights.w_in - build_model(ctpc.load_config(
        base, {"dynamics.method": "bp"})).weights.w_in).abs().max())
    assert moved > 0.1                  # 20 Adam steps of lr 0.01 really moved the weights
    # Round-off: the converged read-out equals BP's to ~1e-16 and the weights stay within
    # ~4e-16 of BP's over the 20 updates (seen); 1e-13 leaves room for summation order only.
    assert worst < 1e-13, worst
