"""Optional biases (``network.bias``): the proof that the maths is written once. With a bias b_l
in every prediction and in the output, the activity gradient, the local weight-and-bias
read-out and BP (autograd through the same network) all follow from the core definitions, and
linear PC-ALM's fixed point still carries BP's gradient exactly, biases included.

References are written here, per sample and per replica, in plain torch (autograd of the
energy of spec section 2 with the biases added), not with the code under test."""
import math
from pathlib import Path

import pytest
import torch
from torch.func import grad

from ctpc.core.dynamics import Dynamics, Rates
from ctpc.core.network import Network, Weights
from ctpc.core.reference import bp_reference

D, N, O, L, B, R, RHO = 5, 4, 3, 5, 3, 2, 1.3
PHI = {"linear": lambda t: t, "tanh": torch.tanh, "relu": torch.relu}
dt = torch.float64


def setup(activation, seed=11):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dt)
    mats = [[rnd(N, D)] + [rnd(N, N) for _ in range(L - 2)] + [rnd(O, N)] for _ in range(R)]
    biases = [[rnd(N) for _ in range(L - 1)] + [rnd(O)] for _ in range(R)]
    w = Weights.stack([[m.numpy() for m in ms] for ms in mats], "cpu", dt,
                      biases=[[b.numpy() for b in bs] for bs in biases])
    x, y = rnd(R, B, D), rnd(R, B, O)
    net = Network(D, N, L, O, activation, "cpu", dt, bias=True)
    return net, w, mats, biases, x, y, rnd


def residuals_ref(mats, bs, x, h, phi):
    """r of ONE replica and sample with biases: h [H, N] -> [H, N]."""
    s_mid = 1 / math.sqrt(N * L)
    preds = [mats[0] @ x / math.sqrt(D) + bs[0]]
    preds += [h[l - 1] + s_mid * mats[l] @ phi(h[l - 1]) + bs[l] for l in range(1, L - 1)]
    return h - torch.stack(preds)


def energy_ref(mats, bs, x, y, h, lam, phi):
    """E_b of ONE sample (spec section 2, biases added to every prediction and the output)."""
    r = residuals_ref(mats, bs, x, h, phi)
    y_hat = mats[-1] @ phi(h[-1]) / N + bs[-1]
    return 0.5 * (y_hat - y).square().sum() + (lam * r).sum() + 0.5 * RHO * r.square().sum()


def forward_ref(mats, bs, x, phi):
    """y_hat of ONE sample by the plain feed-forward pass."""
    h = mats[0] @ x / math.sqrt(D) + bs[0]
    for l in range(1, L - 1):
        h = h + mats[l] @ phi(h) / math.sqrt(N * L) + bs[l]
    return mats[-1] @ phi(h) / N + bs[-1]


def test_weights_carry_biases_through_the_generic_api():
    net, w, mats, biases, x, y, rnd = setup("tanh")
    assert w.has_bias and len(w.tensors) == 5 and w.replica_axes == (0, 1, 0, 1, 0)
    for i in range(R):
        for got, want in zip(w.biases(i), biases[i]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        files = w.arrays(i)
        assert sorted(files) == sorted([f"w{k}" for k in range(1, L + 1)] +
                                       [f"b{k}" for k in range(1, L + 1)])
    # the norm covers weights and biases: sum of squares over every parameter of a replica
    for i in range(R):
        want = math.sqrt(sum(float(m.square().sum()) for m in mats[i]) +
                         sum(float(b.square().sum()) for b in biases[i]))
        assert float(w.norm()[i]) == pytest.approx(want, rel=1e-14)


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
def test_feedforward_and_bp_reference_include_the_biases(activation):
    net, w, mats, biases, x, y, rnd = setup(activation)
    phi = PHI[activation]
    y_hat = net.forward_output(w, x)
    h = net.feedforward(w, x)
    torch.testing.assert_close(net.output(w, net.phi(h)), y_hat, rtol=0, atol=1e-13)
    bp = bp_reference(net, w, x, y)
    for i in range(R):
        for b in range(B):
            torch.testing.assert_close(y_hat[i, b], forward_ref(mats[i], biases[i], x[i, b], phi),
                                       rtol=0, atol=1e-12)
        leaves = [t.clone().requires_grad_() for t in mats[i] + biases[i]]
        loss = sum(0.5 * (forward_ref(leaves[:L], leaves[L:], x[i, b], phi) - y[i, b])
                   .square().sum() for b in range(B)) / B
        refs = torch.autograd.grad(loss, leaves)
        got = bp.grads.matrices(i) + bp.grads.biases(i)
        for g, ref in zip(got, refs):
            torch.testing.assert_close(g, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
def test_activity_gradient_and_readout_are_the_energy_gradients(activation):
    net, w, mats, biases, x, y, rnd = setup(activation)
    phi = PHI[activation]
    h = net.feedforward(w, x) + 0.4 * rnd(L - 1, R, B, N)
    lam = 0.5 * rnd(L - 1, R, B, N)
    dyn = Dynamics(net, leaky=False)
    p = dyn.params(w, x, y, Rates(rho=RHO, k_h=1.0, k_lam=1.0, k_e=0.0))
    S = torch.stack([h, lam])
    resid = dyn.residuals(S, p)
    ours = dyn.activity_gradient(S, resid, p)
    grads = dyn.weight_gradients(S, resid, p)
    for i in range(R):
        for b in range(B):
            ref = grad(energy_ref, argnums=4)(mats[i], biases[i], x[i, b], y[i, b], h[:, i, b],
                                              lam[:, i, b], phi)
            torch.testing.assert_close(ours[:, i, b], ref, rtol=0, atol=1e-12)
        leaves = [t.clone().requires_grad_() for t in mats[i] + biases[i]]
        mean_energy = sum(energy_ref(leaves[:L], leaves[L:], x[i, b], y[i, b], h[:, i, b],
                                     lam[:, i, b], phi) for b in range(B)) / B
        refs = torch.autograd.grad(mean_energy, leaves)
        for got, ref in zip(grads.matrices(i) + grads.biases(i), refs):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_linear_pcalm_fixed_point_is_bp_with_biases():
    """Spec section 5.1 with biases: at the fixed point of linear PC-ALM, r = 0 and lam holds
    BP's adjoints, so the local read-out of every W_l AND b_l equals BP's gradient. The flow is
    integrated by explicit Euler on the one right-hand side until it has settled below
    round-off (float64)."""
    net, w, mats, biases, x, y, rnd = setup("linear", seed=3)
    dyn = Dynamics(net, leaky=False)
    p = dyn.params(w, x, y, Rates(rho=1.0, k_h=1.0, k_lam=1.0, k_e=0.0))
    S = dyn.initial_state(p)
    step = 0.2
    for _ in range(6000):
        S = S + step * dyn.rhs(S, p)
    assert float(dyn.rhs(S, p).abs().max()) < 1e-13        # settled to round-off
    ours = dyn.weight_gradients(S, dyn.residuals(S, p), p)
    bp = bp_reference(net, w, x, y).grads
    scale = max(float(t.abs().max()) for t in bp.tensors)
    for got, ref in zip(ours.tensors, bp.tensors):
        # float64: the read-out's sums of a few dozen products carry ~1e-15 relative round-off
        assert float((got - ref).abs().max()) <= 1e-12 * scale
    assert float(bp.b_hid.abs().max()) > 0.1 and float(bp.b_out.abs().max()) > 0.1


# ------------------------------------------------------------- through the whole simulator
import numpy as np  # noqa: E402

import ctpc  # noqa: E402
from conftest import small_config  # noqa: E402

NET = {"width": 8, "depth": 6, "activation": "linear", "input_dim": 5, "output_dim": 3,
       "bias": True}


def weights_file(path, net=NET, seed=4, with_biases=True, drop=None):
    rng = np.random.default_rng(seed)
    n, d, o, depth = net["width"], net["input_dim"], net["output_dim"], net["depth"]
    shapes = [(n, d)] + [(n, n)] * (depth - 2) + [(o, n)]
    arrays = {f"w{i + 1}": rng.standard_normal(s) for i, s in enumerate(shapes)}
    if with_biases:
        arrays |= {f"b{i + 1}": rng.standard_normal(s[0]) for i, s in enumerate(shapes)}
    for k in drop or ():
        arrays.pop(k)
    np.savez(path, **arrays)
    return path


def test_simulated_linear_pcalm_reaches_bp_with_biases(tmp_path):
    """tests/test_exactness.py's check with biases read from the weights file: the recorded
    BP cosine and relative error cover each layer's W_l and b_l together."""
    # tau_h: auto (dt/tau_h = 1/lambda_max): stable for any weights file (spec 5.2)
    ds = ctpc.simulate(small_config(
        network={**NET, "weights": str(weights_file(tmp_path / "w.npz", seed=0))},
        data={"batch_size": 4}, dynamics={"method": "pcalm", "tau_h": "auto", "tau_lambda": 1.0},
        integrator={"scheme": "semi_implicit", "dt": 1.0, "steps": 5000},
        record={"every": 500}))
    last = ds.isel(time=-1)
    assert ds.attrs["status"] == "ok"
    assert float(last.bp_cos.min()) >= 1 - 1e-9          # the bound (test_exactness)
    assert float(last.bp_relerr.max()) <= 1e-6
    for i in range(1, NET["depth"] + 1):
        g, b = ds[f"grad_w{i}"].values, ds[f"bp_grad_w{i}"].values
        assert np.abs(g - b).max() <= 1e-9 * np.abs(b).max()
    # the biases matter: without them the same weights give another feed-forward output
    plain = ctpc.simulate(small_config(
        network={**NET, "bias": False,
                 "weights": str(weights_file(tmp_path / "p.npz", with_biases=False))},
        data={"batch_size": 4}, integrator={"steps": 1}, record={"every": 1}))
    assert float(np.abs(plain.loss.isel(time=0) - ds.loss.isel(time=0))) > 1e-3


@pytest.mark.parametrize("construction", ["synapses", "network_operation"])
def test_brian2_agrees_with_torch_with_biases(tmp_path, construction):
    pytest.importorskip("brian2")
    cfg = small_config(
        device="cpu", network={**NET, "activation": "tanh",
                               "weights": str(weights_file(tmp_path / "w.npz"))},
        dynamics={"method": "pcalm", "tau_h": 2.0, "tau_lambda": 2.0},
        integrator={"scheme": "euler", "dt": 0.5, "steps": 60}, record={"every": 1},
        brian2={"construction": construction})
    t = ctpc.simulate(cfg)
    b = ctpc.simulate({**cfg, "backend": "brian2"})
    assert b.attrs["status"] == t.attrs["status"] == "ok"
    for v in ("h", "lam", "err", "energy", "loss"):
        scale = float(np.abs(t[v].values).max())
        # the Brian2 agreement bound of tests/test_brian2.py (round-off measured ~1e-14)
        assert float(np.abs(b[v].values - t[v].values).max()) <= 1e-9 * scale, v


def test_the_weights_file_format_with_biases(tmp_path):
    base = small_config(network={**NET}, integrator={"steps": 2})
    # biases in a file for a network without them: refused, naming the key to set
    f = weights_file(tmp_path / "w.npz")
    with pytest.raises(ctpc.ConfigError, match="network.bias is false"):
        ctpc.load_config({**base, "network": {**NET, "bias": False, "weights": str(f)}})
    # some biases but not all: refused, naming the missing ones
    g = weights_file(tmp_path / "g.npz", drop=["b3"])
    with pytest.raises(ctpc.ConfigError, match=r"not \['b3'\]"):
        ctpc.load_config({**base, "network": {**NET, "weights": str(g)}})
    # no biases in the file: zeros, the same run as bias: false
    z = weights_file(tmp_path / "z.npz", with_biases=False)
    zero = ctpc.simulate({**base, "network": {**NET, "weights": str(z)}})
    none = ctpc.simulate({**base, "network": {**NET, "bias": False, "weights": str(z)}})
    np.testing.assert_array_equal(zero.h.values, none.h.values)


def test_training_with_biases_writes_and_reloads_them(tmp_path):
    model = str(Path(__file__).resolve().parent.parent / "models" / "train_digits.yaml")
    quick = ["network.depth=4", "network.width=16", "training.max_updates=6",
             "training.eval_every=null", "network.bias=true"]
    out = tmp_path / "t.nc"
    for method in ("bp", "pcalm"):
        ds = ctpc.train(model, quick + [f"dynamics.method={method}"], out=out, overwrite=True)
        assert ds.attrs["status"] == "ok"
        saved = np.load(out.with_suffix(".weights.npz"))
        assert sorted(saved.files) == [f"b{i}" for i in range(1, 5)] + [f"w{i}" for i in range(1, 5)]
        assert any(np.abs(saved[f"b{i}"]).max() > 0 for i in range(1, 5))   # they learned
    # the file trains on: loaded back as network.weights with biases
    again = ctpc.train(model, quick + [f"network.weights={out.with_suffix('.weights.npz')}"])
    assert again.attrs["status"] == "ok"
