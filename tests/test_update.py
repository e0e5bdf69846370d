"""The training update as a pure function (ctpc.training.update): it never modifies its input
state, two updates from one state are identical, Adam and SGD equal their textbook formulas
(float64, 1e-12) and torch.optim's objects stepping the same gradients (to the bit), and the
divergence helpers and the checkpoint layout of the state behave."""
import dataclasses

import numpy as np
import pytest
import torch

from ctpc.training import prepare_config
from ctpc.training.loop import Batches
from ctpc.training.setup import build_training
from ctpc.training.update import (AdamState, LearnState, Optimiser, SGDState, freeze, keep_good,
                                  update)

from conftest import small_config

BASE = dict(data={"source": "digits", "batch_size": 8, "train_subset": 64, "test_subset": 16},
            network={"width": 5, "depth": 3, "activation": "tanh", "input_dim": None,
                     "output_dim": None},
            integrator={"scheme": "discrete", "dt": 1.0, "budget": "auto", "steps": None},
            training={"max_updates": 6, "eval_every": None, "lr": 0.01,
                      "checkpoint_every": None})
CASES = {
    "bp adam": ({"method": "bp"}, {}),
    "bp adam bias": ({"method": "bp"}, {"network": {"bias": True}}),
    "bp sgd momentum": ({"method": "bp"}, {"training": {"optimizer": "sgd", "momentum": 0.9}}),
    "bp sgd": ({"method": "bp"}, {"training": {"optimizer": "sgd", "momentum": 0.0}}),
    "pcalm adam": ({"method": "pcalm", "state_lr": 0.25, "alpha": 1.0}, {}),
    "pc plastic": ({"method": "pc", "state_lr": 0.25},
                   {"training": {"plasticity": "continuous", "tau_w": 50.0}}),
}


def setup_of(case, dtype="float64", seed=0):
    dyn, extra = CASES[case]
    cfg = small_config(**BASE, dtype=dtype, device="cpu", seed=seed, dynamics=dyn)
    for k, v in extra.items():
        cfg[k] = {**cfg[k], **v}
    return build_training(prepare_config(cfg))


def run(setup, state, n, start=0):
    """n updates from state; (the states after each, the statistics of each)."""
    step = Optimiser.of(setup)
    batches = Batches(setup)
    states, stats = [], []
    with torch.no_grad():
        for u in range(start, start + n):
            state, st = update(state, *batches(u), setup.rule, step)
            states.append(state)
            stats.append(st)
    return states, stats


def tensors(state: LearnState) -> list[torch.Tensor]:
    return list(state.tensors())


def assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device
        assert torch.equal(x, y) and torch.equal(torch.signbit(x), torch.signbit(y))


@pytest.mark.parametrize("case", list(CASES))
def test_the_update_does_not_modify_its_input_state(case):
    setup = setup_of(case)
    assert setup.rule.plastic == (case == "pc plastic")
    s0 = Optimiser.of(setup).init(setup.model.weights)
    s2 = run(setup, s0, 2)[0][-1]             # a state with a non-trivial optimiser state
    for state in (s0, s2):
        before = [t.clone() for t in tensors(state)]
        new = run(setup, state, 1, start=2)[0][0]
        assert_identical(tensors(state), before)
        assert new is not state and new.params is not state.params
        # no tensor of the new state is (a view of) one of the input's
        ptrs = {t.untyped_storage().data_ptr() for t in tensors(state) if t.numel()}
        assert not any(t.untyped_storage().data_ptr() in ptrs for t in tensors(new) if t.numel())


@pytest.mark.parametrize("case", list(CASES))
def test_two_updates_from_one_state_are_identical(case):
    setup = setup_of(case)
    s = run(setup, Optimiser.of(setup).init(setup.model.weights), 2)[0][-1]
    (a,), (sa,) = run(setup, s, 1, start=2)
    (b,), (sb,) = run(setup, s, 1, start=2)
    assert_identical(tensors(a), tensors(b))
    assert sa.keys() == sb.keys()
    assert_identical([sa[k] for k in sorted(sa)], [sb[k] for k in sorted(sb)])


def gradients(setup, params, u):
    """The rule's gradient at ``params`` on the batch of update u (numpy, by tensor)."""
    grads, _ = setup.rule(setup.model.weights.like(params), *Batches(setup)(u))
    return [g.numpy() for g in grads.tensors]


@pytest.mark.parametrize("case", ["bp adam", "bp adam bias", "bp sgd momentum", "bp sgd"])
def test_the_update_equals_the_textbook_optimiser(case):
    """3 steps on a tiny BP problem, float64, against Adam / SGD with momentum written out."""
    setup = setup_of(case)
    t, lr = setup.training, setup.lr
    states, _ = run(setup, Optimiser.of(setup).init(setup.model.weights), 3)
    p = [x.numpy().copy() for x in setup.model.weights.tensors]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for k in range(1, 4):
        g = gradients(setup, [torch.from_numpy(x) for x in p], k - 1)
        for i in range(len(p)):
            if t.optimizer == "adam":
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
                m_hat, v_hat = m[i] / (1 - b1 ** k), v[i] / (1 - b2 ** k)
                p[i] = p[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
            else:
                m[i] = g[i] if k == 1 else t.momentum * m[i] + g[i]
                p[i] = p[i] - lr * m[i]
        got = states[k - 1]
        for i, x in enumerate(got.params.tensors):
            np.testing.assert_allclose(x.numpy(), p[i], rtol=0, atol=1e-12)
        if t.optimizer == "adam":
            assert [float(s) for s in got.opt.step] == [float(k)] * len(p)
            for i in range(len(p)):
                np.testing.assert_allclose(got.opt.exp_avg[i].numpy(), m[i], rtol=0, atol=1e-12)
                np.testing.assert_allclose(got.opt.exp_avg_sq[i].numpy(), v[i], rtol=0,
                                           atol=1e-12)
        elif t.momentum:
            for i in range(len(p)):
                np.testing.assert_allclose(got.opt.momentum_buffer[i].numpy(), m[i], rtol=0,
                                           atol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", ["bp adam", "bp adam bias", "bp sgd momentum", "bp sgd",
                                  "pcalm adam"])
def test_the_update_is_torch_optim_to_the_bit(case, dtype):
    """torch.optim.Adam(params, lr, betas=(0.9, 0.999), eps=1e-8) / SGD(params, lr, momentum)
    objects stepping the same gradients in place give the same parameters and state, bit for
    bit, over 5 updates."""
    setup = setup_of(case, dtype)
    t = setup.training
    params = [p.clone() for p in setup.model.weights.tensors]
    opt = torch.optim.Adam(params, lr=setup.lr, betas=(0.9, 0.999), eps=1e-8) \
        if t.optimizer == "adam" else torch.optim.SGD(params, lr=setup.lr, momentum=t.momentum)
    states, _ = run(setup, Optimiser.of(setup).init(setup.model.weights), 5)
    batches = Batches(setup)
    with torch.no_grad():
        for u, state in enumerate(states):
            grads, _ = setup.rule(setup.model.weights.like(params), *batches(u))
            for p, g in zip(params, grads.tensors):
                p.grad = g
            opt.step()
            assert_identical(list(state.params.tensors), params)
            if isinstance(state.opt, AdamState):
                for name in ("step", "exp_avg", "exp_avg_sq"):
                    assert_identical(list(getattr(state.opt, name)),
                                     [opt.state[p][name] for p in params])
            elif t.momentum:
                assert_identical(list(state.opt.momentum_buffer),
                                 [opt.state[p]["momentum_buffer"] for p in params])
            else:
                assert state.opt.momentum_buffer == (None,) * len(params)
                assert not opt.state


def test_freeze_and_keep_good_are_functions_of_states():
    setup = setup_of("bp adam", seed=0)
    w = setup.model.weights
    R = 3
    wide = w.like(torch.randn(*t.shape[:a], R, *t.shape[a + 1:], dtype=t.dtype)
                  for t, a in zip(w.tensors, w.replica_axes))
    good = wide.map(lambda t: t + 1.0)
    state = Optimiser("adam", 0.1).init(wide)
    before = [t.clone() for t in (*tensors(state), *good.tensors)]
    dead = torch.tensor([1])
    frozen = freeze(state, good, dead)
    assert_identical([*tensors(state), *good.tensors], before)       # inputs untouched
    assert frozen.opt is state.opt
    for f, t, g, a in zip(frozen.params.tensors, wide.tensors, good.tensors, w.replica_axes):
        assert torch.equal(f.select(a, 1), g.select(a, 1))
        for r in (0, 2):
            assert torch.equal(f.select(a, r), t.select(a, r))
    kept = keep_good(good, wide, torch.tensor([0, 2]))
    for k, t, g, a in zip(kept.tensors, wide.tensors, good.tensors, w.replica_axes):
        assert torch.equal(k.select(a, 1), g.select(a, 1))
        assert torch.equal(k.select(a, 0), t.select(a, 0))
    every = keep_good(good, wide, None)
    assert_identical(list(every.tensors), list(wide.tensors))
    assert all(e is not t for e, t in zip(every.tensors, wide.tensors))


@pytest.mark.parametrize("case", ["bp adam", "bp sgd momentum", "pc plastic"])
def test_the_saved_optimiser_state_loads_back(case):
    """Optimiser.load of a state's fields (what a checkpoint holds) gives the state back; fields
    that do not fit are a ValueError."""
    setup = setup_of(case)
    optimiser = Optimiser.of(setup)
    state = run(setup, optimiser.init(setup.model.weights), 2)[0][-1]
    saved = {} if state.opt is None else {f.name: list(getattr(state.opt, f.name))
                                          for f in dataclasses.fields(state.opt)}
    back = optimiser.load(state.params, saved)
    assert_identical(tensors(back), tensors(state))
    if state.opt is None:
        return
    with pytest.raises(ValueError):
        optimiser.load(state.params, {k: v[:-1] for k, v in saved.items()})
    with pytest.raises(ValueError):
        optimiser.load(state.params, {"other": []})
    name = "exp_avg" if isinstance(state.opt, AdamState) else "momentum_buffer"
    with pytest.raises(ValueError):
        optimiser.load(state.params, {**saved, name: [torch.zeros(2)] * len(saved[name])})
    if isinstance(state.opt, SGDState):    # before the first step: no buffers yet
        fresh = optimiser.load(state.params, {"momentum_buffer": [None] * len(saved[name])})
        assert fresh.opt.momentum_buffer == (None,) * len(saved[name])
