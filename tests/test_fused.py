"""integrator.compile: true (or 'unrolled') and 'loop'. Training runs the whole presentation
as one compiled program (ctpc.core.compiled.presentation, its steps unrolled, or chunks of it; with
'loop' ctpc.core.compiled.presentation_loop, its steps a while_loop), and a solver made with compile
runs unobserved chunks of steps compiled (ctpc.core.compiled.steps); all must give the eager numbers up
to round-off.

Tolerance (float64): the compiled programs do the same arithmetic in another summation order
(unrolled sums over k, sums over the batch on the vector lanes), ~1e-16 relative per operation,
through a few steps of a well-conditioned map: measured 2e-16 .. 2e-14 relative on these
configs. 1e-12 leaves margin for other compilers' contraction choices, while a wrong term of the
step (a missing dual update, a sign, a scale) moves the read-out by far more than that.

Each compile takes 5-30 s (C++ build), so the configs are tiny (N <= 20, L <= 4, T = 3, B = 4)
and few; the cache of compiled programs is per process."""
import numpy as np
import pytest
import torch

import ctpc
import ctpc.core.compiled as fused_mod
from ctpc.training import train_replicas
from ctpc.training.rules import CompiledInferenceRule, InferenceRule, PlasticRule
from ctpc.training.setup import build_training

TOL = 1e-12


def config(**over):
    cfg = {"name": "fused", "dtype": "float64", "device": "cpu", "seed": 0,
           "network": {"width": 4, "depth": 3, "activation": "relu", "input_dim": 64,
                       "output_dim": 10},
           "data": {"source": "digits", "batch_size": 4},
           "dynamics": {"method": "pcalm", "state_lr": 0.25, "alpha": 1.0, "rho": 0.7},
           "integrator": {"scheme": "discrete", "dt": 1.0, "budget": 3, "compile": True},
           "training": {"max_updates": 3, "eval_every": None, "probe_size": 8}}
    for key, value in over.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


CASES = {
    # ReLU, every contraction unrolled (N, O <= 16), lam frozen on the last step (pre_dual)
    "relu": {},
    # tanh, N = 20 > 16 (batched products), two primal steps per dual, post_dual
    "tanh-wide-post": {"network__activation": "tanh", "network__width": 20,
                       "integrator__inner_steps": 2,
                       "integrator__weight_credit_timing": "post_dual"},
    # linear (no phi'), one hidden layer (no square weights), PC (alpha = 0: lam stays 0)
    "linear-depth2-pc": {"network__activation": "linear", "network__depth": 2,
                         "dynamics__method": "pc"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_update_equals_the_eager_rule(case):
    """Gradients and every statistic of one update: the compiled presentation against the
    eager rule (start, integrate, read-out) on the same weights and batch."""
    stats = _check_fused_update(CASES[case])
    if case == "linear-depth2-pc":
        assert float(stats.lam_norm.abs().max()) == 0.0


def test_chunked_presentation_equals_the_eager_rule(monkeypatch):
    """A presentation of more than WHOLE_STEPS_MAX steps runs as a head (start and the first
    chunk), middle chunks (one program, called repeatedly) and a tail (the last steps and the
    read-out), so its compile time does not grow with T; the numbers are the eager rule's.
    Chunks of 2 steps and T = 7: head 2, two middle chunks, tail 1; two primal steps per dual
    and post_dual, so the dual update at every chunk boundary and on the very last step is
    exercised."""
    monkeypatch.setattr(fused_mod, "WHOLE_STEPS_MAX", 2)
    monkeypatch.setattr(fused_mod, "CHUNK_STEPS", 2)
    assert fused_mod.pieces(7) == [2, 2, 2, 1]
    calls = fused_mod.compiled.cache_info()
    _check_fused_update({"integrator__budget": 7, "integrator__inner_steps": 2,
                         "integrator__weight_credit_timing": "post_dual"})
    # the head, middle and tail programs were asked for, not the one-program presentation
    asked = fused_mod.compiled.cache_info()
    assert asked.hits + asked.misses == calls.hits + calls.misses + 4


LOOP_CASES = {
    # 7 steps: the loop runs 6 (each updating lam), then the last step (post_dual: lam too);
    # two primal steps per dual step; every contraction unrolled; the start scans 2 layers
    "relu-T7-inner2-post-depth4": {"network__depth": 4, "integrator__budget": 7,
                                   "integrator__inner_steps": 2,
                                   "integrator__weight_credit_timing": "post_dual"},
    # one step: the loop runs zero times; batched products (N = 20 > 16); pre_dual; one
    # hidden layer (no square weights: nothing to scan)
    "tanh-wide-T1-depth2": {"network__activation": "tanh", "network__width": 20,
                            "network__depth": 2, "integrator__budget": 1},
}


@pytest.mark.parametrize("case", list(LOOP_CASES))
def test_looped_presentation_equals_the_eager_rule(case, monkeypatch):
    """integrator.compile: loop runs the presentation as one program whose steps are a
    while_loop (ctpc.core.compiled.presentation_loop); the numbers are the eager rule's."""
    asked, compiled = [], fused_mod.compiled
    monkeypatch.setattr(fused_mod, "compiled",
                        lambda name, *rest: asked.append(name) or compiled(name, *rest))
    _check_fused_update({**LOOP_CASES[case], "integrator__compile": "loop"})
    assert asked == ["presentation_loop"]


def test_pieces():
    """pieces(n): one program up to WHOLE_STEPS_MAX steps, else chunks of CHUNK_STEPS and one
    of the rest; they add up to n."""
    whole, chunk = fused_mod.WHOLE_STEPS_MAX, fused_mod.CHUNK_STEPS
    assert chunk <= whole
    for n in range(1, 5 * whole):
        programs = fused_mod.pieces(n)
        assert sum(programs) == n and all(m >= 1 for m in programs)
        assert (programs == [n]) if n <= whole else (max(programs) == chunk)
    assert fused_mod.pieces(256) == [16] * 16
    assert fused_mod.pieces(65) == [16] * 4 + [1]
    assert fused_mod.pieces(64) == [64]


def _check_fused_update(over: dict):
    """One update of the config with ``over``: compiled against eager, to TOL; returns the
    compiled rule's statistics."""
    fused = build_training(ctpc.load_config(config(**over)))
    eager = build_training(ctpc.load_config(config(**{**over, "integrator__compile": False})))
    assert isinstance(fused.rule, CompiledInferenceRule)
    assert type(eager.rule) is InferenceRule
    x, y = fused.train.x[:4][None], fused.train.y[:4][None]
    with torch.no_grad():
        g_f, st_f = fused.rule(fused.model.weights, x, y)
        g_e, st_e = eager.rule(eager.model.weights, x, y)
    for a, b in zip(g_f.tensors, g_e.tensors):
        assert a.shape == b.shape
        if b.numel():
            assert rel(a, b) < TOL
    for name in ("loss", "energy", "res_norm", "lam_norm", "credit_norm"):
        a, b = getattr(st_f, name), getattr(st_e, name)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=TOL, atol=1e-15, err_msg=name)
    return st_f


@pytest.mark.parametrize("mode", [True, "loop"])
def test_fused_training_equals_eager_training_for_replicas(mode):
    """Two replicas with different rho, state_lr (so dt k_h) and seeds trained for 3 updates
    with Adam: same losses, statistics, probe alignment (a batch of another size, which the
    fused rule leaves to the eager one) and final weights; the unrolled and the looped
    program (per-replica rates reach the loop's body as [R, 1, 1] tensors)."""
    over = [{"seed": 0, "dynamics": {"rho": 0.7, "state_lr": 0.25}},
            {"seed": 1, "dynamics": {"rho": 1.3, "state_lr": 0.4}}]

    def run(compile_):
        cfgs = []
        for o in over:
            c = config(integrator__compile=compile_)
            c["seed"] = o["seed"]
            c["dynamics"].update(o["dynamics"])
            cfgs.append(ctpc.load_config(c))
        return train_replicas(cfgs)

    for (ds_f, w_f), (ds_e, w_e) in zip(run(mode), run(False)):
        for v in ("train_loss", "energy", "res_norm", "lam_norm", "credit_norm", "grad_norm",
                  "bp_cos"):
            np.testing.assert_allclose(ds_f[v].values, ds_e[v].values, rtol=TOL, atol=1e-15,
                                       err_msg=v)
        assert w_f.keys() == w_e.keys()            # the weights file's arrays: w1 .. wL
        for k in w_e:
            np.testing.assert_allclose(w_f[k], w_e[k], rtol=TOL, atol=1e-15, err_msg=k)
        # Adam turns round-off in a gradient into round-off in the step (its normalisation is
        # scale-free): measured <= 5e-16 relative on every series and weight after 3 updates


def test_which_rule_runs():
    """The fused program serves what it implements; everything else keeps the eager rule."""
    def rule(**over):
        return build_training(ctpc.load_config(config(**over))).rule
    assert isinstance(rule(), CompiledInferenceRule) and rule().mode == "unrolled"
    assert rule(integrator__compile="unrolled").mode == "unrolled"
    assert rule(integrator__compile="loop").mode == "loop"
    assert type(rule(integrator__compile=False)) is InferenceRule
    with pytest.raises(ctpc.ConfigError, match="integrator.compile"):
        rule(integrator__compile="loops")
    assert isinstance(rule(integrator__scheme="semi_implicit", integrator__budget=None,
                           integrator__steps=3), CompiledInferenceRule)
    assert type(rule(integrator__scheme="rk4", integrator__budget=None, integrator__steps=3,
                     integrator__dt=0.1)) is InferenceRule
    assert type(rule(dynamics__tau_e=2.0, integrator__scheme="semi_implicit",
                     integrator__budget=None, integrator__steps=3)) is InferenceRule  # leaky e
    c = config()
    c["training"].update(plasticity="continuous", tau_w=100.0)
    assert isinstance(build_training(ctpc.load_config(c)).rule, PlasticRule)


def test_programs_carry_their_own_variant_limit(monkeypatch):
    """dynamo's global recompile limit (8) is per thread in torch 2.13: a sweep's task thread
    never saw a raised one and failed at its 9th shape. Each program is compiled with its own
    limit instead."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    for name in ("presentation", "presentation_loop", "steps"):
        fused_mod.compiled.__wrapped__(name, "cpu", True)
    assert [kw.get("recompile_limit") for kw in seen] == [fused_mod.RECOMPILE_LIMIT] * 3


def test_grad_mode_does_not_build_a_second_program():
    """Training's first rule call (the probe at update 0) runs with autograd on, the updates
    under no_grad; the program runs under no_grad either way, so grad mode (a dynamo guard)
    builds no second variant: the second call captures no new graph."""
    from torch._dynamo.utils import counters
    setup = build_training(ctpc.load_config(config(integrator__compile="loop")))
    x, y = setup.train.x[:4][None], setup.train.y[:4][None]
    w = setup.model.weights
    with torch.enable_grad():
        g_grad, _ = setup.rule(w, x, y)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    with torch.no_grad():
        g_none, _ = setup.rule(w, x, y)
    assert counters["stats"]["unique_graphs"] == graphs
    assert not g_grad.w_in.requires_grad
    for a, b in zip(g_grad.tensors, g_none.tensors):
        assert torch.equal(a, b)


def test_compiled_training_keeps_freed_buffers(monkeypatch):
    """A compiled rule allocates its temporaries per call; its setup asks glibc to keep freed
    buffers (a sweep worker's MALLOC_TRIM_THRESHOLD_ otherwise makes every one a fresh
    mapping: 5x slower), and the eager setup leaves the allocator alone."""
    import ctpc.training.setup as setup_mod
    calls = []
    monkeypatch.setattr(setup_mod, "keep_freed_buffers", lambda: calls.append(1))
    build_training(ctpc.load_config(config(integrator__compile=False)))
    assert calls == []
    build_training(ctpc.load_config(config()))
    assert calls == [1]
    import platform
    if platform.libc_ver()[0] == "glibc":
        assert fused_mod.keep_freed_buffers() is True


def test_no_compiler_is_exit_2_before_training(tmp_path):
    """Without a C++ compiler the run is refused before any work, naming the key and the fix."""
    import yaml
    from torch._inductor import config as inductor_config

    from ctpc.cli.train import main as train_main
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config()))
    with inductor_config.patch({"cpp.cxx": (str(tmp_path / "no-such-g++"),)}):
        with pytest.raises(ctpc.ConfigError, match="integrator.compile"):
            build_training(ctpc.load_config(config()))
        assert train_main([str(path), "--quiet", "--out", str(tmp_path / "o.nc")]) == 2
    assert not (tmp_path / "o.nc").exists()


def test_compiled_chunks_of_steps_equal_eager(monkeypatch):
    """make_solver(compile=True): chunks of steps with nothing observed between them (what
    ctpc.core.engine.integrate runs without an observer) run ctpc.core.compiled.steps compiled; the final
    state and network pass equal the eager steps'. Checked every 4 of 8 steps, so the second
    chunk ends the run (no dual update on the last step: pre_dual); with programs of at most 3
    steps each chunk of 4 runs as programs of 3 and 1 steps (the dual update between them
    kept)."""
    monkeypatch.setattr(fused_mod, "WHOLE_STEPS_MAX", 3)
    monkeypatch.setattr(fused_mod, "CHUNK_STEPS", 3)
    from ctpc.core.engine import integrate
    from ctpc.core.compiled import compiled
    from ctpc.core.solvers import make_solver
    from ctpc.build.objects import build_model

    c = config(integrator__budget=8)
    c["data"] = {"source": "synthetic", "batch_size": 4}
    del c["training"]
    model = build_model([ctpc.load_config(c)])
    p = model.params()
    out = {}
    calls = compiled.cache_info()
    for compile_ in (True, False):
        solver = make_solver(model.dyn, "discrete", compile=compile_)
        with torch.no_grad():
            res = integrate(solver, solver.start(p), p, 8, dt=model.dt, check_every=4)
        out[compile_] = (res.final_state(), res.solver.residuals(res.carry, p))
    assert compiled.cache_info().hits + compiled.cache_info().misses > calls.hits + calls.misses
    (S_c, r_c), (S_e, r_e) = out[True], out[False]
    assert rel(S_c, S_e) < TOL
    for a, b in ((r_c.r, r_e.r), (r_c.y_hat, r_e.y_hat), (r_c.a, r_e.a)):
        assert rel(a, b) < TOL


def test_simulate_says_it_does_not_compile():
    """simulate observes the steps it records, so it runs them eagerly; a config that asks for
    compile is told so rather than silently ignored."""
    c = config(integrator__budget=2)
    c["data"] = {"source": "synthetic", "batch_size": 2}
    del c["training"]
    with pytest.warns(UserWarning, match="integrator.compile"):
        ctpc.simulate(ctpc.load_config(c))


@pytest.mark.parametrize("compile_mode", [True, "loop"])
def test_compiled_presentation_with_biases_equals_the_eager_rule(compile_mode):
    """network.bias: the compiled programs use the lanes restatements of the formulas
    (ctpc.core.network, next to the definitions); with non-zero biases in the pass and the
    read-out they give the eager rule's gradients, bias gradients included."""
    over = {"network__bias": True, "network__depth": 4, "integrator__compile": compile_mode}
    fused = build_training(ctpc.load_config(config(**over)))
    eager = build_training(ctpc.load_config(config(**{**over, "integrator__compile": False})))
    gen = torch.Generator().manual_seed(2)
    for b in ("b_hid", "b_out"):
        values = torch.randn(getattr(fused.model.weights, b).shape, generator=gen,
                             dtype=torch.float64)
        getattr(fused.model.weights, b).copy_(values)
        getattr(eager.model.weights, b).copy_(values)
    x, y = fused.train.x[:4][None], fused.train.y[:4][None]
    with torch.no_grad():
        g_f, st_f = fused.rule(fused.model.weights, x, y)
        g_e, st_e = eager.rule(eager.model.weights, x, y)
    assert len(g_f.tensors) == len(g_e.tensors) == 5
    for a, b in zip(g_f.tensors, g_e.tensors):
        assert a.shape == b.shape and rel(a, b) < TOL
    np.testing.assert_allclose(st_f.energy.numpy(), st_e.energy.numpy(), rtol=TOL)
