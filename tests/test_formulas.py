"""Every restatement of the core formulas (ctpc.core.network, "the formulas") agrees with the
definition on random inputs: the lanes layout of the compiled programs, the batched pass over
all layers, the solvers' in-place pass and the recorder's many-slot read-out. Float64; the
restatements sum in another order, so they agree to round-off (|diff| <= 1e-12 relative to
the values' size, for sums of at most a few dozen terms of order 1)."""
import pytest
import torch

from ctpc.core import network as nw
from ctpc.core.dynamics import Dynamics, Rates
from ctpc.core.solvers import make_solver
from ctpc.core.network import Network, Weights

dt = torch.float64
TOL = 1e-12


def case(bias: bool, activation="tanh", D=5, N=6, L=5, O=3, B=4, R=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dt)
    mats = [[rnd(N, D).numpy()] + [rnd(N, N).numpy() for _ in range(L - 2)] + [rnd(O, N).numpy()]
            for _ in range(R)]
    biases = [[rnd(N).numpy() for _ in range(L - 1)] + [rnd(O).numpy()] for _ in range(R)]
    w = Weights.stack(mats, "cpu", dt, biases=biases if bias else None)
    net = Network(D, N, L, O, activation, "cpu", dt, bias=bias)
    x, y = rnd(R, B, D), rnd(R, B, O)
    h = net.feedforward(w, x) + 0.3 * rnd(L - 1, R, B, N)
    lam = 0.5 * rnd(L - 1, R, B, N)
    return net, w, x, y, h, lam


def close(a, b):
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= TOL * scale


@pytest.mark.parametrize("bias", [False, True])
def test_lanes_layout_restates_the_pass_and_the_readout(bias):
    net, w, x, y, h, lam = case(bias)
    tr = lambda t: None if t is None else t.transpose(-1, -2)
    a = net.phi(h)
    # network pass: layer, input and output predictions
    drive = net.input_drive(w, x)
    lanes_drive = nw.lanes_input_prediction(w.w_in, tr(x), net.s_in,
                                            None if w.b_hid is None else tr(w.b_hid[0]))
    close(tr(lanes_drive), drive)
    pred = net.mid_predictions(w, h, a)
    lanes_pred = nw.lanes_layer_prediction(tr(h[:-1]), tr(a[:-1]), w.w_mid, net.s_mid,
                                           None if w.b_hid is None else tr(w.b_hid[1:]))
    close(tr(lanes_pred), pred)
    out_err = net.output(w, a) - y
    lanes_err = nw.lanes_output_error(tr(a[-1]), w.w_out, tr(y), net.s_out, tr(w.b_out))
    close(tr(lanes_err), out_err)
    close(nw.loss(lanes_err, out_axis=-2), nw.loss(out_err))
    # read-out
    g = lam + 1.3 * (h - torch.cat([drive[None], pred]))
    ref = net.weight_gradients(a, out_err + y, g, x, y)
    got = nw.lanes_weight_readout(tr(g), tr(a), tr(out_err), x,
                                  (net.s_in, net.s_mid, net.s_out), bias)
    assert len(got) == len(ref.tensors)
    for mine, want in zip(got, ref.tensors):
        close(mine, want)


@pytest.mark.parametrize("bias", [False, True])
def test_batched_pass_equals_the_layer_by_layer_definition(bias):
    net, w, x, y, h, lam = case(bias)
    a = net.phi(h)
    pred = net.mid_predictions(w, h, a)
    for l in range(1, net.n_hidden):
        b = None if w.b_hid is None else w.b_hid[l]
        one = nw.layer_prediction(h[l - 1], a[l - 1], w.w_mid[l - 1].transpose(1, 2),
                                  net.s_mid, b)
        torch.testing.assert_close(pred[l - 1], one, rtol=0, atol=0)   # the same kernel
    # the feed-forward pass and the pass that discards its layers give the same output
    torch.testing.assert_close(net.forward_output(w, x), net.output(w, net.phi(
        net.feedforward(w, x))), rtol=0, atol=0)
    # at the feed-forward point every residual is exactly zero (same kernels: no round-off)
    hf = net.feedforward(w, x)
    assert float(net.residuals(w, hf, net.input_drive(w, x)).r.abs().max()) == 0.0


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("scheme", ["discrete", "semi_implicit"])
def test_solver_in_place_pass_equals_the_definition(bias, scheme):
    net, w, x, y, h, lam = case(bias)
    dyn = Dynamics(net, leaky=False)
    p = dyn.params(w, x, y, Rates(rho=1.0, k_h=0.25, k_lam=1.0, k_e=0.0))
    solver = make_solver(dyn, scheme)
    S = torch.stack([h, lam])
    carry = solver.init(S.clone(), p)
    ours = solver.residuals(carry, p)
    ref = dyn.residuals(S, p)
    close(ours.r, ref.r)
    close(ours.y_hat, ref.y_hat)


@pytest.mark.parametrize("bias", [False, True])
def test_energy_definition_against_plain_sums(bias):
    net, w, x, y, h, lam = case(bias)
    dyn = Dynamics(net, leaky=False)
    rho = 1.3
    p = dyn.params(w, x, y, Rates(rho=rho, k_h=1.0, k_lam=1.0, k_e=0.0))
    S = torch.stack([h, lam])
    resid = dyn.residuals(S, p)
    lagrangian, loss = dyn.energy(S, resid, p)
    B = x.shape[1]
    for i in range(x.shape[0]):
        l_ref = sum(0.5 * float((resid.y_hat[i, b] - y[i, b]).square().sum())
                    for b in range(B)) / B
        c_ref = sum(float((lam[:, i, b] * resid.r[:, i, b]).sum())
                    + 0.5 * rho * float(resid.r[:, i, b].square().sum()) for b in range(B)) / B
        assert float(loss[i]) == pytest.approx(l_ref, rel=TOL)
        assert float(lagrangian[i]) == pytest.approx(l_ref + c_ref, rel=TOL)


@pytest.mark.parametrize("bias", [False, True])
def test_many_slot_readout_equals_one_slot_at_a_time(bias):
    """The recorder reads out k slots in one call (weight_readout_slots); each slot must equal
    the definition on its own batch."""
    net, w, x, y, h, lam = case(bias)
    k = 3
    gen = torch.Generator().manual_seed(9)
    g = torch.randn(h.shape[0], h.shape[1], k * h.shape[2], h.shape[3], generator=gen, dtype=dt)
    a = torch.randn(g.shape, generator=gen, dtype=dt)
    out_err = torch.randn(x.shape[0], k, x.shape[1], y.shape[-1], generator=gen, dtype=dt)
    many = nw.weight_readout_slots(g, a, out_err, x, k, (net.s_in, net.s_mid, net.s_out), bias)
    B = x.shape[1]
    for s in range(k):
        sl = slice(s * B, (s + 1) * B)
        one = net.weight_gradients(a[:, :, sl], out_err[:, s] + y, g[:, :, sl], x, y)
        for t_many, t_one, axis in zip(many.tensors, one.tensors, one.replica_axes):
            close(t_many.select(axis + 1, s), t_one)
