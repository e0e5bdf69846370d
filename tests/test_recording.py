"""The recorded summaries against a slow numpy reference written here, slot by slot.

A record step stages the state and its residuals; the summaries of a chunk of staged slots are
computed together in batched operators (:class:`ctpc.sim.recording.Recorder`). These tests rebuild
every recorded series from the recorded full traces with plain numpy (the network pass, energy,
norms, the local weight read-out and its cosine against the saved BP gradients), for chunks of
1, 3 and all slots, replicas with different rates, and leaky and instantaneous error neurons.
"""
import numpy as np
import pytest

import ctpc
import ctpc.sim.recording
from ctpc.config.schema import layer_shapes
from ctpc.build.resolve import load_config
from ctpc.results.memory import record_slot_bytes
from ctpc.build.objects import build_model
from ctpc.core.network import init_weights, layer_scales
from ctpc.sim.simulation import simulate_replicas

from conftest import small_config

# float64: the batched and the per-slot arithmetic differ only in summation order, ~1e-16
# relative per operation over a few dozen operations.
TOL = 1e-12


def configs(tau_e):
    dyn = [{"method": "pcalm", "tau_h": 4.0, "tau_lambda": 1.0, "rho": 1.0, "tau_e": tau_e},
           {"method": "pcalm", "tau_h": 3.0, "tau_lambda": 2.0, "rho": 0.6, "tau_e": tau_e}]
    return [small_config(seed=i, dynamics=d, network={"activation": "relu"},
                         integrator={"scheme": "semi_implicit", "dt": 0.5, "steps": 13},
                         record={"every": 2, "samples": "all"})
            for i, d in enumerate(dyn)]


def numpy_summaries(cfg, ds):
    """Every series of ``ds`` recomputed from its traces (all layers, samples, units)."""
    cfg = load_config(cfg)
    model = build_model(cfg)
    x, y = model.x[0].numpy(), model.y[0].numpy()
    W = init_weights(cfg)
    net = cfg.network
    s_in, s_mid, s_out = layer_scales(net.input_dim, net.width, net.depth)
    rho, B = cfg.dynamics.rho, cfg.data.batch_size
    out = {k: [] for k in ("energy", "loss", "res_norm", "err_norm", "lam_norm", "credit_norm",
                           "bp_cos", "bp_relerr")}
    bp = [ds[f"bp_grad_w{l}"].values for l in range(1, net.depth + 1)]
    for t in range(ds.sizes["time"]):
        h, lam, err = (ds[v].values[t] for v in ("h", "lam", "err"))     # [H, B, N]
        a = np.maximum(h, 0)
        r = np.empty_like(h)
        r[0] = h[0] - s_in * x @ W[0].T
        for l in range(1, len(h)):
            r[l] = h[l] - (h[l - 1] + s_mid * a[l - 1] @ W[l].T)
        y_hat = s_out * a[-1] @ W[-1].T
        g = rho * err + lam
        np.testing.assert_allclose(ds.credit.values[t], g, rtol=TOL, atol=TOL)
        loss = 0.5 * ((y_hat - y) ** 2).sum() / B
        out["loss"].append(loss)
        out["energy"].append(loss + ((lam * r).sum() + 0.5 * rho * (r ** 2).sum()) / B)
        rms = lambda v: np.sqrt((v ** 2).sum(axis=(1, 2)) / B)
        for key, v in (("res_norm", r), ("err_norm", err), ("lam_norm", lam),
                       ("credit_norm", g)):
            out[key].append(rms(v))
        grads = [-s_in / B * g[0].T @ x]
        grads += [-s_mid / B * g[l].T @ a[l - 1] for l in range(1, len(h))]
        grads.append(s_out / B * (y_hat - y).T @ a[-1])
        cos, rel = [], []
        for gl, bl in zip(grads, bp):
            n = np.linalg.norm(gl)
            cos.append(0.0 if n == 0 else (gl * bl).sum() / (n * np.linalg.norm(bl)))
            rel.append(np.linalg.norm(gl - bl) / np.linalg.norm(bl))
        out["bp_cos"].append(cos)
        out["bp_relerr"].append(rel)
    assert [g.shape for g in grads] == [tuple(s) for s in layer_shapes(cfg)]
    return {k: np.asarray(v) for k, v in out.items()}


def chunk_of(k, cfg):
    """RECORD_CHUNK_BYTES that makes a chunk hold exactly k slots of two replicas of cfg."""
    c = load_config(cfg)
    n = c.network
    pops = 3 if c.dynamics.tau_e > 0 else 2
    return k * record_slot_bytes(pops, n.depth - 1, 2, c.data.batch_size, n.width, n.input_dim,
                                 n.output_dim, 8)


@pytest.mark.parametrize("tau_e", [0.0, 2.0])
@pytest.mark.parametrize("slots_per_chunk", [1, 3, None])
def test_recorded_series_equal_a_numpy_reference(tau_e, slots_per_chunk, monkeypatch):
    cfgs = configs(tau_e)
    if slots_per_chunk is not None:
        monkeypatch.setattr(ctpc.sim.recording, "RECORD_CHUNK_BYTES",
                            chunk_of(slots_per_chunk, cfgs[0]))
    datasets = simulate_replicas(cfgs)
    for cfg, ds in zip(cfgs, datasets):
        assert ds.sizes["time"] == 8                       # steps 0, 2, ..., 12, 13
        ref = numpy_summaries(cfg, ds)
        for key, want in ref.items():
            np.testing.assert_allclose(ds[key].values, want, rtol=TOL, atol=TOL, err_msg=key)
        # the feed-forward start: every residual and credit is exactly zero, cosine 0
        assert (ds.res_norm.values[0] == 0).all() and (ds.bp_cos.values[0, :-1] == 0).all()
        assert ds.bp_cos.values[-1, -1] > 0.5


def test_a_run_with_one_slot_per_chunk_equals_one_chunk(monkeypatch):
    """The chunking is invisible: traces and series agree to round-off whatever K is."""
    cfgs = configs(0.0)
    whole = simulate_replicas(cfgs)
    monkeypatch.setattr(ctpc.sim.recording, "RECORD_CHUNK_BYTES", 1)
    single = simulate_replicas(cfgs)
    for a, b in zip(whole, single):
        for v in a.data_vars:
            np.testing.assert_allclose(a[v].values, b[v].values, rtol=TOL, atol=TOL, err_msg=v)


# ------------------------------------------------------------------------------ streaming
def long_config(**record):
    return small_config(integrator={"scheme": "semi_implicit", "dt": 0.5, "steps": 60},
                        record={"every": 1, "samples": "all", **record})


def unstable_config(**record):
    """Explicit Euler beyond its stable step (spec 5.2): diverges between two checks."""
    return small_config(dynamics={"method": "pcalm", "tau_h": 10.0, "tau_lambda": 1.0},
                        integrator={"scheme": "euler", "dt": 2.5, "steps": 150},
                        record={"every": 1, "samples": "all", **record})


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few slots, and every append the stream receives: [slots per append]."""
    from ctpc.results.stream import RecordStream
    monkeypatch.setattr(ctpc.sim.recording, "RECORD_CHUNK_BYTES", 40_000)
    appended = []
    original = RecordStream.append

    def append(self, arrays):
        appended.append(len(next(iter(arrays.values()))))
        return original(self, arrays)
    monkeypatch.setattr(RecordStream, "append", append)
    return appended


@pytest.mark.parametrize("make, record", [
    (long_config, {}),
    (long_config, {"every": 3, "layers": [2, 4], "samples": [0, 2], "units": [1, 5]}),
    (unstable_config, {}),
])
def test_a_streamed_run_equals_the_same_run_in_memory(make, record, tmp_path, small_chunks):
    in_memory = ctpc.simulate(make(**record), out=tmp_path / "memory.nc")
    streamed = ctpc.simulate(make(**record, stream_mb=1e-3), out=tmp_path / "streamed.nc")
    assert len(small_chunks) > 3 and max(small_chunks) < streamed.sizes["time"]
    assert sorted(streamed.data_vars) == sorted(in_memory.data_vars)
    assert dict(streamed.sizes) == dict(in_memory.sizes)
    for key in ("status", "steps_completed", "n_steps"):
        assert streamed.attrs[key] == in_memory.attrs[key]
    for v in in_memory.data_vars:
        np.testing.assert_allclose(streamed[v].values, in_memory[v].values, rtol=TOL, atol=TOL,
                                   err_msg=v)
    np.testing.assert_array_equal(streamed.time.values, in_memory.time.values)
    # only the output is left: the scratch file of the stream is gone
    streamed.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.nc", "streamed.nc"]


def test_a_diverged_streamed_run_keeps_its_last_bounded_state(tmp_path, small_chunks):
    ds = ctpc.simulate(unstable_config(stream_mb=1e-3), out=tmp_path / "d.nc")
    assert ds.attrs["status"] == "diverged"
    assert ds.step.values[-1] == ds.attrs["steps_completed"]
    assert np.isfinite(ds.h.values).all()


def test_streaming_needs_an_output_file_and_says_so():
    with pytest.raises(ctpc.ConfigError, match="record.stream_mb.*give one"):
        ctpc.simulate(long_config(stream_mb=1e-3))


def test_replicas_and_sweep_cells_refuse_to_stream(tmp_path):
    with pytest.raises(ctpc.ConfigError, match="replicas and sweep cells keep their records"):
        simulate_replicas([long_config(stream_mb=1e-3), long_config(stream_mb=1e-3)])
    from ctpc.sweep import plan_sweep
    with pytest.raises(ctpc.ConfigError, match=r"sweep cell \(seed=0\).*record.stream_mb"):
        plan_sweep({**long_config(stream_mb=1e-3), "sweep": {"seed": [0, 1]}},
                   out=tmp_path / "s.nc")


def test_a_failed_streamed_run_leaves_neither_output_nor_scratch(tmp_path, monkeypatch):
    import ctpc.sim.simulation

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(ctpc.sim.simulation, "build_dataset", fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ctpc.simulate(long_config(stream_mb=1e-3), out=tmp_path / "x.nc")
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_streams_a_long_run(tmp_path, small_chunks):
    import yaml
    from ctpc.cli.simulate import main
    cfg = tmp_path / "long.yaml"
    cfg.write_text(yaml.safe_dump(long_config()))
    out = tmp_path / "long.nc"
    assert main([str(cfg), "--out", str(out), "--quiet", "--set",
                 "record.stream_mb=0.001"]) == 0
    assert len(small_chunks) > 3
    ds = ctpc.open_results(out)
    assert ds.sizes["time"] == 61 and np.isfinite(ds.h.values).all()


def test_a_stream_that_cannot_fit_on_the_disk_is_refused_before_the_run(tmp_path, monkeypatch):
    import shutil
    import ctpc.sim.simulation
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ctpc.sim.simulation.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))
    with pytest.raises(ctpc.InputError, match="only 0.000954 MB are free"):
        ctpc.simulate(long_config(stream_mb=1e-3), out=tmp_path / "x.nc")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_streamed_runs_scratch_is_removed_by_the_next_run(tmp_path):
    """A run killed midway leaves NAME.tmp-stream-PID (a directory of raw files); the next run
    of the same output removes it once its writer is gone."""
    dead = tmp_path / "x.nc.tmp-stream-4206649"           # above Linux's pid_max: never alive
    dead.mkdir()
    (dead / "trace_h.bin").write_bytes(b"\0" * 64)
    ctpc.simulate(long_config(stream_mb=1e-3), out=tmp_path / "x.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nc"]


def test_a_streamed_run_says_when_it_writes_its_output(tmp_path, capsys):
    """The run's bar ends before the output is written from the scratch: the writing is
    announced (with a bar of its own when it lasts over a second)."""
    ds = ctpc.simulate(long_config(stream_mb=1e-3), out=tmp_path / "x.nc", progress=True)
    assert "writing" in capsys.readouterr().err and ds.sizes["time"] == 61
