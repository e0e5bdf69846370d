"""The PyTorch backend: integrate the stacked ODEs on CPU or CUDA, detect divergence, record."""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config, ConfigError
from ..data import load_batch
from ..dynamics import Dynamics
from ..integrators import make_solver
from ..network import Network, init_weights
from ..recording import Recorder, plan_recording
from ..reference import bp_reference
from ..results import RunResult

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: 'cuda' was asked for but this torch ({torch.__version__}) sees no CUDA GPU; "
            "install a CUDA build of torch (README, 'Running on a GPU') or use --device cpu")
    return torch.device(name)


def build_network(cfg: Config, device: torch.device | None = None):
    """Network and batch (x, y) on the config's device and dtype."""
    device = device if device is not None else resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    net = Network(init_weights(cfg), cfg.network.activation, device, dtype)
    x, y = load_batch(cfg.data, cfg.network, cfg.seed)
    as_t = lambda a: torch.as_tensor(a, device=device, dtype=dtype)
    return net, as_t(x), as_t(y)


def build(cfg: Config, device: torch.device | None = None):
    """Network and dynamics for a resolved config (also used by benchmarks and stability)."""
    net, x, y = build_network(cfg, device)
    tau_h, tau_l = cfg.rates()
    dyn = Dynamics(net, x, y, rho=cfg.dynamics.rho, tau_h=tau_h, tau_lambda=tau_l,
                   tau_e=cfg.dynamics.tau_e)
    return net, dyn


def run(cfg: Config, progress: bool = True) -> RunResult:
    t0 = time.perf_counter()
    plan = plan_recording(cfg)            # refuses oversized traces before any work
    net, dyn = build(cfg)
    it = cfg.integrator
    solver = make_solver(it.scheme, dyn, it.dt, inner_steps=it.inner_steps,
                         weight_credit_timing=it.weight_credit_timing)
    bp = bp_reference(net, dyn.x, dyn.y)
    rec = Recorder(dyn, plan, bp)
    n = it.n_steps

    carry = solver.init(dyn.initial_state())
    rec.record(0, solver.state(carry))
    peaks = torch.empty(it.check_every, device=net.device, dtype=net.dtype)
    step, diverged_step = 0, None
    with torch.no_grad(), tqdm(total=n, desc=f"{cfg.name or 'ctpc'} {it.scheme}",
                               unit="step", disable=not progress, leave=False) as bar:
        while step < n:
            chunk = min(it.check_every, n - step)
            snapshot = carry                # solvers never mutate a carry in place
            for j in range(chunk):
                carry = solver.step(carry, last=step + j + 1 == n)
                S = solver.state(carry)
                # |S|_inf into a device buffer: one host sync per chunk, not per step.
                peaks[j] = torch.linalg.vector_norm(S, float("inf"))
                rec.maybe_record(step + j + 1, S)
            bad = ~torch.isfinite(peaks[:chunk]) | (peaks[:chunk] > it.divergence_bound)
            if bool(bad.any()):
                first = int(torch.nonzero(bad)[0, 0])
                diverged_step = step + first + 1
                carry = snapshot           # replay to the last state within bounds
                for k in range(first):
                    carry = solver.step(carry, last=False)
                step += first
                break
            step += chunk
            bar.update(chunk)

    final = solver.state(carry)
    if diverged_step is not None:
        rec.truncate(step)
    if not rec.recorded_steps or rec.recorded_steps[-1] != step:
        rec.record(step, final)
    with torch.no_grad():
        grads = net.split_weights(dyn.weight_gradients(final, dyn.residuals(final)))
    traces, series = rec.to_numpy()
    to_np = lambda ts: [t.detach().cpu().numpy() for t in ts]
    return RunResult(
        steps=np.asarray(rec.recorded_steps), dt=it.dt, traces=traces, series=series,
        grads=to_np(grads), bp_grads=to_np(bp.grads),
        bp_adjoint_norm=bp.adjoints.square().sum(-1).mean(-1).sqrt().cpu().numpy(),
        layers=plan.layers, samples=plan.samples, units=plan.units,
        all_layers=plan.all_layers, n_hidden=net.n_hidden,
        status="ok" if diverged_step is None else "diverged",
        diverged_at=None if diverged_step is None else diverged_step * it.dt,
        steps_completed=step, backend="torch", device=str(net.device),
        wall_time_s=time.perf_counter() - t0)
