"""The written solver interface (:class:`ctpc.core.integrators.Solver`): every scheme implements
it, the engine runs it without feature tests, the step size is an argument of every step, the
``in_place`` flag tells the truth, and the numbers are bit for bit those of the code before the
interface (dt bound in the solver, ``hasattr``/``getattr`` dispatch in the engine)."""
from __future__ import annotations

import hashlib
import inspect
import math
import re
from typing import Protocol, runtime_checkable

import pytest
import torch

import ctpc
from ctpc.build.objects import build_model
from ctpc.core import engine, integrators
from ctpc.core.engine import integrate
from ctpc.core.delay import DelayedSolver
from ctpc.core.integrators import ExplicitRK, GaussSeidel, Solver
from ctpc.core.solvers import make_solver
from ctpc.core.noise import NoisyGaussSeidel, NoisyRK, noise_of
from ctpc.training import plasticity
from ctpc.training.plasticity import PlasticGaussSeidel, PlasticRK, final_weights, plastic_solver


@runtime_checkable
class CheckableSolver(Solver, Protocol):
    """The Protocol, made checkable here only (the library never dispatches on it)."""


# name: (scheme, activation, dt per replica, tau_e, make_solver options)
GOLDEN_CASES = {
    "euler/tanh/dt2": ("euler", "tanh", (0.3, 0.5), 0.0, {}),
    "euler/tanh/dt2/leaky": ("euler", "tanh", (0.3, 0.5), 0.7, {}),
    "euler/relu": ("euler", "relu", (0.4, 0.4), 0.0, {}),
    "heun/tanh/dt2": ("heun", "tanh", (0.3, 0.5), 0.0, {}),
    "heun/tanh/dt2/leaky": ("heun", "tanh", (0.3, 0.5), 0.7, {}),
    "heun/relu": ("heun", "relu", (0.4, 0.4), 0.0, {}),
    "rk4/tanh/dt2": ("rk4", "tanh", (0.3, 0.5), 0.0, {}),
    "rk4/tanh/dt2/leaky": ("rk4", "tanh", (0.3, 0.5), 0.7, {}),
    "rk4/relu": ("rk4", "relu", (0.4, 0.4), 0.0, {}),
    "semi_implicit/tanh/dt2": ("semi_implicit", "tanh", (0.3, 0.5), 0.0, {}),
    "semi_implicit/tanh/dt2/leaky": ("semi_implicit", "tanh", (0.3, 0.5), 0.7, {}),
    "semi_implicit/relu": ("semi_implicit", "relu", (0.4, 0.4), 0.0, {}),
    "semi_implicit/linear": ("semi_implicit", "linear", (0.5, 0.5), 0.0, {}),
    "discrete/relu/inner2/pre_dual": ("discrete", "relu", (1.0, 1.0), 0.0,
                                      {"inner_steps": 2, "weight_credit_timing": "pre_dual"}),
    "discrete/tanh/post_dual": ("discrete", "tanh", (1.0, 1.0), 0.0,
                                {"inner_steps": 1, "weight_credit_timing": "post_dual"}),
}

# Fingerprints (first 16 hex digits of the sha256 of the float64 bytes) of what the code before
# the Solver interface computed for GOLDEN_CASES: "steps": S after 5 steps; "plastic": S and the
# weights after 5 steps of continuous plasticity (tau_W = 3); "integrate": the final state,
# steps completed and diverged step of 11 steps checked every 4, replica 1 under a bound it
# crosses (it is frozen, the dt of its steps set to 0; replica 0 goes on). Produced by running
# the same cases through the old API (make_solver(dyn, scheme, dt), step(carry, p)) on the CPU,
# float64, one thread, torch 2.13.0+cpu. A mismatch on another platform (another BLAS) may be
# round-off; test_discrete.py and test_training_exact.py check the schemes against numpy there.
GOLDEN = {
    'euler/tanh/dt2': {'steps': 'bd9191b36e1d7aeb', 'plastic': 'df78c6843100cc18', 'integrate': ('cac5010342911dcb', [11, 3], [None, 4])},
    'euler/tanh/dt2/leaky': {'steps': '7c843084e473b69f', 'plastic': 'a42ed70487676e28', 'integrate': ('f04da3a1c1bc9b4d', [11, 6], [None, 7])},
    'euler/relu': {'steps': '2eb1a205688a1ef4', 'plastic': '22644b5908754a2d', 'integrate': ('1eec8247e2d5230f', [11, 3], [None, 4])},
    'heun/tanh/dt2': {'steps': '9b0aa32d62397cee', 'plastic': 'f50b4dc3dccf451f', 'integrate': ('9eaada7985216365', [11, 2], [None, 3])},
    'heun/tanh/dt2/leaky': {'steps': 'ed376280861b4e4c', 'plastic': '215cab67523904d1', 'integrate': ('a48da70940e2f6d9', [11, 3], [None, 4])},
    'heun/relu': {'steps': '9d3e292792ef8242', 'plastic': '4c4a0ee41a124ef1', 'integrate': ('f98a77d9fc47c1f1', [11, 2], [None, 3])},
    'rk4/tanh/dt2': {'steps': '33f36c889243a12e', 'plastic': 'ab16222a1cbe7dcb', 'integrate': ('a0a71a288b055479', [11, 2], [None, 3])},
    'rk4/tanh/dt2/leaky': {'steps': 'd0701eee1415946b', 'plastic': '624e8a4831e1e846', 'integrate': ('facef114b1a044b8', [11, 2], [None, 3])},
    'rk4/relu': {'steps': '52089beee6dd9ad3', 'plastic': 'a5364c5554dabc52', 'integrate': ('06f293f4ad88272e', [11, 2], [None, 3])},
    'semi_implicit/tanh/dt2': {'steps': '6491f77d6a475e76', 'plastic': '828f522f8e59694d', 'integrate': ('f1e210fdf1ae5c54', [11, 3], [None, 4])},
    'semi_implicit/tanh/dt2/leaky': {'steps': '727c290511698fd8', 'plastic': 'cde7ca7e03898e0b', 'integrate': ('7145ca3f3bb18664', [11, 3], [None, 4])},
    'semi_implicit/relu': {'steps': 'dd9fe622b54e3556', 'plastic': '15c30676e33eb257', 'integrate': ('ce75692817bbd799', [11, 3], [None, 4])},
    'semi_implicit/linear': {'steps': '62b75e8252f276dd', 'plastic': 'f913178e764d03fd', 'integrate': ('f9a918d91e2caafd', [11, 2], [None, 3])},
    'discrete/relu/inner2/pre_dual': {'steps': 'bf35000c1d7932ac', 'integrate': ('647f363fe7209e01', [11, 2], [None, 3])},
    'discrete/tanh/post_dual': {'steps': '507d75c1658d6283', 'integrate': ('9eb2b9bc40119ff8', [11, 3], [None, 4])},
}


def model_of(act="tanh", dts=(0.3, 0.5), tau_e=0.0):
    """R = len(dts) replicas (seeds 0, 1, ...) of a small float64 PC-ALM network on the CPU."""
    cfgs = [ctpc.load_config({
        "dtype": "float64", "device": "cpu", "seed": i,
        "network": {"width": 6, "depth": 5, "activation": act, "input_dim": 5, "output_dim": 3},
        "data": {"source": "synthetic", "batch_size": 3},
        "dynamics": {"method": "pcalm", "tau_h": 2.0, "tau_lambda": 1.5, "tau_e": tau_e},
        "integrator": {"scheme": "semi_implicit", "dt": d, "steps": 5}})
        for i, d in enumerate(dts)]
    return build_model(cfgs)


def fingerprint(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def all_solvers(dyn):
    """One solver of every kind: each scheme, the compiling Gauss-Seidel solver, and the
    continuous-plasticity solvers over both families."""
    out = {s: make_solver(dyn, s) for s in ("euler", "heun", "rk4", "semi_implicit")}
    out["discrete"] = make_solver(dyn, "discrete", inner_steps=2)
    out["discrete/compile"] = make_solver(dyn, "discrete", compile=True)
    out["plastic/semi_implicit"] = plastic_solver(out["semi_implicit"], 3.0)
    out["plastic/heun"] = plastic_solver(out["heun"], 3.0)
    noise = noise_of([(0.1, 0.0, 0.1)] * dyn_replicas(dyn), list(range(dyn_replicas(dyn))),
                     dyn.n_pop, None, torch.float64)
    out["noisy/euler"] = make_solver(dyn, "euler", noise=noise)
    out["noisy/semi_implicit"] = make_solver(dyn, "semi_implicit", noise=noise)
    out["delayed/semi_implicit"] = make_solver(dyn, "semi_implicit", delay_steps=2)
    out["delayed/rk4"] = make_solver(dyn, "rk4", delay_steps=1)
    return out


def dyn_replicas(dyn) -> int:
    return 2         # model_of's default: two replicas


def test_every_solver_satisfies_the_protocol():
    dyn = model_of().dyn
    kinds = {type(s) for s in all_solvers(dyn).values()}
    assert kinds == {ExplicitRK, GaussSeidel, PlasticGaussSeidel, PlasticRK, NoisyRK,
                     NoisyGaussSeidel, DelayedSolver}
    for name, solver in all_solvers(dyn).items():
        assert isinstance(solver, CheckableSolver), name
        assert isinstance(type(solver).in_place, bool), name      # data on the class
        assert not hasattr(solver, "dt"), f"{name} binds a step size"
        assert list(inspect.signature(solver.step).parameters)[1:3] == ["p", "dt"], name
        assert list(inspect.signature(solver.advance).parameters)[1:4] == ["p", "dt", "n"], name


def test_engine_has_no_feature_tests_and_dt_is_never_bound():
    src = inspect.getsource(engine)
    assert "hasattr" not in src and "getattr" not in src
    assert "with_dt" not in src
    assert "check_every" in inspect.signature(integrate).parameters
    assert inspect.signature(integrate).parameters["check_every"].default is inspect.Parameter.empty
    for mod in (engine, integrators, plasticity):
        assert not re.search(r"replace\([^)]*\bdt\s*=", inspect.getsource(mod)), mod.__name__


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_bit_identical_to_the_code_before_the_interface(name):
    scheme, act, dts, tau_e, kw = GOLDEN_CASES[name]
    m = model_of(act, dts, tau_e)
    p, dt = m.params(), m.dt
    assert isinstance(dt, torch.Tensor) == (dts[0] != dts[1])    # both dt kinds are covered
    solver = make_solver(m.dyn, scheme, **kw)
    want = GOLDEN[name]
    with torch.no_grad():
        c = solver.init(m.dyn.initial_state(p), p)
        for j in range(5):
            c = solver.step(c, p, dt, last=j == 4)
        S = solver.state(c).clone()
        assert fingerprint(S) == want["steps"], "step: not bit-identical to before"
        # advance (what integrate runs unobserved) is the same n steps, bit for bit
        adv = solver.advance(solver.start(p), p, dt, 5, True)
        assert torch.equal(solver.state(adv), S)
        if scheme != "discrete":
            ps = plastic_solver(solver, 3.0)
            c = ps.init(m.dyn.initial_state(p), p)
            for j in range(5):
                c = ps.step(c, p, dt, last=j == 4)
            got = fingerprint(ps.state(c), *final_weights(ps, c).tensors)
            assert got == want["plastic"], "plastic step: not bit-identical to before"
        # a bound replica 1 crosses mid-run: the first step where its peak exceeds all before
        c = solver.start(p)
        peaks = [float(solver.state(c)[:, :, 1].abs().max())]
        for j in range(11):
            c = solver.step(c, p, dt, last=j == 10)
            peaks.append(float(solver.state(c)[:, :, 1].abs().max()))
        k = next(k for k in range(3, 12) if peaks[k] > max(peaks[:k]))
        bound = torch.tensor([1e6, (peaks[k] + max(peaks[:k])) / 2], dtype=torch.float64)
        res = integrate(solver, solver.start(p), p, 11, dt=dt, check_every=4, bound=bound)
    assert (fingerprint(res.final_state()), res.steps_completed.tolist(),
            res.diverged_step) == want["integrate"]
    assert isinstance(res.dt, torch.Tensor) and res.dt.view(-1).tolist()[1] == 0.0


def _carry_tensors(solver, carry):
    if isinstance(solver, (NoisyRK, NoisyGaussSeidel)):
        return _carry_tensors(solver.base, carry.inner)
    if isinstance(solver, DelayedSolver):
        return [carry.S, carry.hist_h, carry.hist_g, carry.hist_o]
    if isinstance(solver, PlasticGaussSeidel):
        return [carry[0].S, *carry[1].tensors]
    if isinstance(solver, GaussSeidel):
        return [carry.S]
    return list(carry) if isinstance(carry, tuple) else [carry]


def test_in_place_flag_tells_the_truth():
    """A pure solver's step leaves its input carry as it was; an in-place one writes into it
    (so the caller must snapshot first); snapshot is unaffected by later steps either way."""
    m = model_of()
    p = m.params()
    with torch.no_grad():
        for name, solver in all_solvers(m.dyn).items():
            c = solver.start(p)
            before = [t.clone() for t in _carry_tensors(solver, c)]
            snap = solver.snapshot(c)
            snap_before = [t.clone() for t in _carry_tensors(solver, snap)]
            solver.step(c, p, m.dt)
            same = all(torch.equal(a, b) for a, b in zip(before, _carry_tensors(solver, c)))
            assert same is not solver.in_place, name
            assert all(torch.equal(a, b) for a, b in
                       zip(snap_before, _carry_tensors(solver, snap))), name


def test_a_step_of_zero_leaves_the_state_unchanged_after_a_nonzero_one():
    """dt is read per call: the same solver object steps with dt, then with 0 (exactly the
    identity: y + 0 * k == y for finite k), then with dt again (it moves)."""
    m = model_of()
    p = m.params()
    with torch.no_grad():
        for name, solver in all_solvers(m.dyn).items():
            if name == "discrete/compile":
                continue                              # step is the eager one (test_fused.py)
            c = solver.step(solver.start(p), p, 0.5)
            S = solver.state(c).clone()
            # what else the carry holds and a step of 0 must keep: plastic weights (a delay's
            # history is not kept: a step records what it sends, at any dt)
            W = [] if isinstance(solver, DelayedSolver) else \
                [t.clone() for t in _carry_tensors(solver, c)[1:]]
            c = solver.step(c, p, 0.0)
            assert torch.equal(solver.state(c), S), name
            assert all(torch.equal(a, b) for a, b in zip(W, _carry_tensors(solver, c)[1:])), name
            c = solver.step(c, p, 0.5)
            assert not torch.equal(solver.state(c), S), name


def test_euler_half_steps_differ_from_a_full_step_by_the_exact_second_order_term():
    """Linear network, instantaneous errors: the right-hand side is affine, f(y) = A y + b, so
    two Euler steps of dt/2 minus one of dt is exactly (dt/2)^2 A f(y), with
    A f(y) = f(y + f(y)) - f(y). Tolerance: float64 round-off of the few operations per entry on
    O(1) numbers (~1e-15); 1e-12 leaves room for the sums inside the batched products."""
    m = model_of(act="linear", dts=(1.0,))
    p, dyn = m.params(), m.dyn
    solver = make_solver(dyn, "euler")
    dt = 0.2
    with torch.no_grad():
        y = dyn.initial_state(p)
        y = solver.step(y, p, 1.0)                    # lam != 0: every population moves
        half = solver.step(solver.step(y, p, dt / 2), p, dt / 2)
        full = solver.step(y, p, dt)
        f = dyn.rhs(y, p)
        expected = (dt / 2) ** 2 * (dyn.rhs(y + f, p) - f)
    assert float(expected.abs().max()) > 1e-4                     # the term is not negligible
    torch.testing.assert_close(half - full, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scheme,order", [("euler", 1), ("heun", 2), ("rk4", 4),
                                          ("semi_implicit", 1)])
def test_local_error_of_a_step_scales_with_the_dt_passed(scheme, order):
    """One step of the same solver object with dt and with dt/2, against the exact flow (rk4 in
    64 substeps, error ~(dt/64)^5, far below): the local error falls as dt^(order+1). The
    ratio is asymptotic; at dt = 0.2 on time constants of 1.5-2 ms it is within 0.35 of its
    limit in log2 (seen: < 0.1)."""
    m = model_of(dts=(1.0,))
    p, dyn = m.params(), m.dyn
    solver, exact = make_solver(dyn, scheme), make_solver(dyn, "rk4")
    with torch.no_grad():
        y = exact.step(dyn.initial_state(p), p, 1.0)
        errors = []
        for dt in (0.2, 0.1):
            ref = y
            for _ in range(64):
                ref = exact.step(ref, p, dt / 64)
            got = solver.state(solver.step(solver.init(y, p), p, dt))
            errors.append(float((got - ref).abs().max()))
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order + 1, abs=0.35)


@pytest.mark.parametrize("scheme", ["heun", "semi_implicit"])
def test_a_dt_per_replica_is_each_replica_with_its_own_dt(scheme):
    """dt as a [R, 1, 1] tensor steps each replica with its own value: the same as stepping
    all replicas with replica r's dt as a float, to round-off (a tensor dt multiplies by
    addcmul, a float one by an alpha: the last bit may differ)."""
    m = model_of(dts=(0.3, 0.5))
    p = m.params()
    solver = make_solver(m.dyn, scheme)
    with torch.no_grad():
        def run(dt):
            c = solver.start(p)
            for _ in range(3):
                c = solver.step(c, p, dt)
            return solver.state(c).clone()
        both = run(m.dt)
        for r, d in enumerate((0.3, 0.5)):
            torch.testing.assert_close(both[:, :, r], run(d)[:, :, r], rtol=1e-13, atol=1e-15)
