"""Conduction delays (``dynamics.delay``, :mod:`ctpc.core.delay`): their exact stability edge
and how credit propagates through depth with them.

Stability. With a delay of k steps a scheme's step is a map of the *augmented* state: the
state S and what the layers sent at the last k steps (activity, credit, output error: the
ring buffer of :class:`ctpc.core.delay.DelayCarry`, lags 1 .. k). As in
:mod:`ctpc.studies.stability`, its matrix is the central-difference derivative of the solver's
own ``step`` at the feed-forward point with constant history (so a prediction is about exactly
the code that runs; for linear networks the map is affine and the differences are exact to
round-off), one column per copy of the sample in one batch. Its spectral radius decides: above
1 + :data:`ctpc.studies.stability.STABLE_TOL` the delayed run diverges. The dimension is
``P H N + k (2 H N + O)``: dense eigenvalues (numpy) up to
:data:`ctpc.studies.stability.DENSE_MAX`, ARPACK above (the study's ``arnoldi``). RK4's
half-step stages read the buffer linearly interpolated, so its step is a linear map too.

:func:`predicted_delay_max` is the largest k such that every delay 1 .. k is stable (scan
k = 1, 2, 4, ... to the first unstable k, then bisection on integers: it assumes one edge,
which holds for these maps where we looked; a DDE can in principle regain stability at larger
delays, which this does not search for). :func:`check_delay_prediction` runs just below and
just above it. :func:`delay_edges` and :func:`delay_propagation` are the studies (xarray).
"""
from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr
from scipy.sparse.linalg import LinearOperator

from ctpc.build.resolve import load_config
from ctpc.common.labels import var_attrs
from ctpc.config.schema import Config
from ctpc.core.delay import DelayCarry
from ctpc.core.solvers import make_solver
from ctpc.sim.simulation import simulate
from ctpc.studies.stability import (DENSE_MAX, STABLE_TOL, Linearisation, arnoldi,
                                    spectral_radius)


# ---------------------------------------------------------------------------- the map
class AugmentedMap:
    """The one-step map of ``scheme`` with a delay of ``k`` steps, linearised, on the
    augmented state (S's evolving populations, then lags 1 .. k of the sent h, g and y_hat - y,
    lag-major). ``lin``: a :class:`ctpc.studies.stability.Linearisation` (one sample)."""

    def __init__(self, lin: Linearisation, scheme: str, dt: float, k: int):
        self.lin, self.dt, self.k = lin, dt, k
        self.solver = make_solver(lin.dyn, scheme, inner_steps=lin.cfg.integrator.inner_steps,
                                  weight_credit_timing=lin.cfg.integrator.weight_credit_timing,
                                  delay_steps=k)
        base = self.solver.init(lin.S0, lin.params(1))     # constant history at S0
        self.base_lags = base.lags()
        P, H, N = lin.block
        self.O = lin.y.shape[-1]
        self.nS, self.nh = P * H * N, H * N
        self.n = self.nS + k * (2 * self.nh + self.O)

    def apply(self, V: torch.Tensor) -> torch.Tensor:
        """Derivative of the step along each row of V [m, n] -> [m, n] (central difference)."""
        lin, k, m = self.lin, self.k, V.shape[0]
        (P, H, N), nS, nh, O = lin.block, self.nS, self.nh, self.O
        p = lin.params(m)

        def at(delta):
            S = lin.S0.expand(-1, -1, -1, m, -1).clone()
            S[lin.pops] += delta[:, :nS].reshape(m, P, H, N).permute(1, 2, 0, 3).unsqueeze(2)
            rest = delta[:, nS:].reshape(m, k, 2 * nh + O)
            as_hist = lambda d: d.reshape(m, k, H, N).permute(1, 2, 0, 3).unsqueeze(2)
            lh = self.base_lags[0].expand(-1, -1, -1, m, -1) + as_hist(rest[..., :nh])
            lg = self.base_lags[1].expand(-1, -1, -1, m, -1) + as_hist(rest[..., nh:2 * nh])
            lo = self.base_lags[2].expand(-1, -1, m, -1) + \
                rest[..., 2 * nh:].permute(1, 0, 2).unsqueeze(1)
            c = self.solver.step(DelayCarry.from_lags(S, lh, lg, lo, p.y), p, self.dt)
            h1, g1, o1 = c.lags()
            flat = lambda t: t.squeeze(2).permute(2, 0, 1, 3).reshape(m, k, nh)
            return torch.cat([c.S[lin.pops].squeeze(2).permute(2, 0, 1, 3).reshape(m, nS),
                              torch.cat([flat(h1), flat(g1),
                                         o1.squeeze(1).permute(1, 0, 2)], -1).reshape(m, -1)],
                             -1)
        with torch.no_grad():
            return (at(lin.eps * V) - at(-lin.eps * V)) / (2 * lin.eps)

    def matrix(self, chunk: int = 1024) -> np.ndarray:
        eye = torch.eye(self.n, dtype=torch.float64)
        return torch.cat([self.apply(eye[s:s + chunk]) for s in range(0, self.n, chunk)]).T.numpy()

    def radius(self, method: str = "auto") -> float:
        """Spectral radius: dense (numpy) up to DENSE_MAX dimensions, else ARPACK."""
        if method == "dense" or (method == "auto" and self.n <= DENSE_MAX):
            return float(np.abs(np.linalg.eigvals(self.matrix())).max())
        mv = lambda v: self.apply(torch.as_tensor(np.real(v)).reshape(1, -1))[0].numpy()
        op = LinearOperator((self.n, self.n), matvec=mv, dtype=np.float64)
        return float(np.abs(arnoldi(op, which="LM")).max())


def delayed_radius(cfg: Config, scheme: str, k: int, dt: float | None = None,
                   lin: Linearisation | None = None, method: str = "auto") -> float:
    """Spectral radius of the augmented one-step map at delay k steps (k = 0: the undelayed
    map of :func:`ctpc.studies.stability.spectral_radius`), step dt (ms; default the config's)."""
    lin = lin or Linearisation(cfg)
    dt = cfg.integrator.dt if dt is None else dt
    if k == 0:
        return spectral_radius(cfg, scheme, dt, method=method, lin=lin)
    return AugmentedMap(lin, scheme, dt, k).radius(method)


class DelayEdge(NamedTuple):
    steps: int            # largest stable delay in steps (every delay 1..steps is stable)
    ms: float             # the same in ms (steps x dt)
    dt: float             # ms
    radius_at: float      # spectral radius at the edge (<= 1)
    radius_above: float   # at steps + 1 (> 1); NaN if no edge below k_cap


def predicted_delay_max(cfg: Config, scheme: str, dt: float | None = None,
                        k_cap: int = 2048, method: str = "auto") -> DelayEdge:
    """The largest stable conduction delay of ``scheme`` at the config's dt (or ``dt``), tau_h,
    tau_lambda, tau_e, rho, for one sample (sample 0: exact for linear networks, whose maps do
    not depend on the sample). Raises ValueError if dt is unstable without delay. With no edge up
    to ``k_cap`` steps: steps = k_cap, radius_above NaN."""
    lin = Linearisation(cfg)
    dt = cfg.integrator.dt if dt is None else dt
    cache: dict[int, float] = {}

    def radius(k):
        if k not in cache:
            cache[k] = delayed_radius(cfg, scheme, k, dt, lin, method)
        return cache[k]
    unstable = lambda k: radius(k) > 1 + STABLE_TOL
    if unstable(0):
        raise ValueError(f"scheme {scheme!r} is unstable at dt = {dt:g} ms without delay "
                         f"(spectral radius {radius(0):.6g}); choose a smaller dt")
    lo, hi = 0, 1
    while not unstable(hi):
        lo, hi = hi, 2 * hi
        if hi > k_cap:
            return DelayEdge(lo, lo * dt, dt, radius(lo), math.nan)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    return DelayEdge(lo, lo * dt, dt, radius(lo), radius(hi))


# ---------------------------------------------------------------------------- runs
def run_delayed(cfg: Config, scheme: str, k: int, steps: int, dt: float | None = None,
                growth_bound: float | None = None):
    """Integrate at a delay of k steps (float64, no traces); the dataset (status 'ok' or
    'diverged'). ``growth_bound``: the run's ``integrator.growth_bound`` (default the
    config's)."""
    dt = cfg.integrator.dt if dt is None else dt
    tau_h, tau_l = cfg.rates()
    raw = cfg.to_dict()
    raw["dynamics"].update(state_lr=None, alpha=None, tau_h=tau_h, tau_lambda=tau_l,
                           delay=k * dt)
    raw["integrator"] = {"scheme": scheme, "dt": dt, "steps": steps,
                         "growth_bound": growth_bound or cfg.integrator.growth_bound}
    if scheme == "discrete":
        raw["integrator"].update(steps=None, budget=steps,
                                 inner_steps=cfg.integrator.inner_steps)
    raw.update(dtype="float64", device="cpu", output=None, sweep=None)
    raw["record"] = {"every": steps, "variables": []}
    return simulate(raw)


def check_delay_prediction(cfg: Config, scheme: str, edge: DelayEdge | None = None,
                           ks: tuple | None = None, growth: float = 1e4,
                           growth_bound: float = 3.0,
                           max_steps: int = 400_000) -> list[dict]:
    """Run at delays ``ks`` (default: the edge and one step above it) and compare with the
    prediction. Just above the edge the unstable mode grows slowly (spectral radius ~1 +
    1e-4 per step), so the runs flag divergence at ``growth_bound`` (3) x max(1, |initial
    state|), not the default 1e3: a stable run stays within a few per cent of its initial
    size (seen: 1.06x on every shipped model, and below 3x at the edge itself). Steps are sized
    so that the predicted growth at the largest k reaches ``growth`` (1e4): the unstable mode
    starts at >= 1e-3 of the state from the feed-forward point on these networks, which leaves
    a factor >= 3 past the bound; a stable run cannot diverge however long it runs."""
    edge = edge or predicted_delay_max(cfg, scheme)
    ks = ks or (edge.steps, edge.steps + 1)
    lin = Linearisation(cfg)
    r = delayed_radius(cfg, scheme, max(ks), edge.dt, lin)
    steps = 2000 if r <= 1 + STABLE_TOL else \
        int(min(max(math.log(growth) / math.log(r), 2000), max_steps))
    rows = []
    for k in ks:
        t0 = time.perf_counter()
        ds = run_delayed(cfg, scheme, k, steps, edge.dt, growth_bound)
        rows.append({"scheme": scheme, "k": k, "delay_ms": k * edge.dt, "steps": steps,
                     "predicted": "stable" if k <= edge.steps else "unstable",
                     "observed": "stable" if ds.attrs["status"] == "ok" else "unstable",
                     "wall_s": time.perf_counter() - t0})
    return rows


# ---------------------------------------------------------------------------- studies
# The shipped models' time constants (models/*.yaml): name -> (method, tau_h, tau_lambda,
# tau_e, rho). pcalm_paper_discrete (eta_h = 0.25, alpha = 1 at dt = 1) has pcalm_deep's.
SHIPPED = {
    "pcalm_deep": ("pcalm", 4.0, 1.0, 0.0, 1.0),
    "pc_deep": ("pc", 4.0, None, 0.0, 1.0),
    "pcalm_leaky_errors": ("pcalm", 4.0, 4.0, 1.0, 1.0),
    "pcalm_linear_exact": ("pcalm", 1.0, 1.0, 0.0, 1.0),
}
EDGE_SCHEMES = ("euler", "semi_implicit", "heun", "rk4", "discrete")


def edge_model(small: bool, method="pcalm", tau_h=4.0, tau_lambda=1.0, tau_e=0.0,
               rho=1.0, dt=0.05) -> dict:
    """A linear network (the linearisation is exact) as sims/stability.py's ``map_model``,
    smaller: synthetic data with few outputs keep the augmented map (P H N + k(2 H N + O)
    dimensions) dense-sized at k ~ 20-60."""
    n, depth, d, o = (4, 4, 4, 2) if small else (6, 5, 6, 3)
    dyn = {"method": method, "rho": rho, "tau_h": tau_h, "tau_e": tau_e}
    if method == "pcalm":
        dyn["tau_lambda"] = tau_lambda
    return {"name": "delay_edge", "dtype": "float64", "device": "cpu",
            "network": {"width": n, "depth": depth, "activation": "linear", "input_dim": d,
                        "output_dim": o},
            "data": {"source": "synthetic", "batch_size": 2},
            "dynamics": dyn,
            "integrator": {"scheme": "semi_implicit", "dt": dt, "steps": 100},
            "record": {"every": 10 ** 9, "variables": []}}


# The edge is resolved to 5 %: at least this many steps (one step = 1/MIN_EDGE_STEPS of it).
MIN_EDGE_STEPS = 20
TARGET_EDGE_STEPS = 22


def resolving_dt(cfg_of_dt, scheme: str = "semi_implicit", dt0: float | None = None,
                 passes: int = 3) -> tuple[float, DelayEdge]:
    """A step dt (ms) at which ``scheme``'s delay edge is >= :data:`MIN_EDGE_STEPS` steps, and
    that edge: start from dt0 (default a tenth of the config's smallest time constant), then
    dt = edge (ms) / :data:`TARGET_EDGE_STEPS`, until the edge has enough steps. ``cfg_of_dt``:
    dt -> a resolved config (the edge in ms converges as dt shrinks, so the passes agree)."""
    cfg = cfg_of_dt(1.0)
    taus = [t for t in (*cfg.rates(), cfg.dynamics.tau_e) if t and math.isfinite(t)]
    dt = 0.1 * min(taus) if dt0 is None else dt0
    for _ in range(passes):
        edge = predicted_delay_max(cfg_of_dt(dt), scheme)
        if edge.steps >= MIN_EDGE_STEPS or not math.isfinite(edge.radius_above):
            return dt, edge
        dt = float(f"{max(edge.steps, 1) * dt / TARGET_EDGE_STEPS:.3g}")
    return dt, predicted_delay_max(cfg_of_dt(dt), scheme)


def delay_edges(small: bool = True, models=None, schemes=None,
                check: bool = True) -> xr.Dataset:
    """Predicted (augmented-map) and measured delay edge per (model, scheme), for the shipped
    models' time constants (:data:`SHIPPED`) on a small linear network (:func:`edge_model`).

    The shipped models' own dt (0.25-1 ms) puts the edge at a step or two, too coarse to
    check to 5 %; each model gets its own finer dt (:func:`resolving_dt`, from semi_implicit's
    edge: >= 20 steps), shared by its schemes. The measured edge is the predicted k when the
    runs at k (stable) and k + 1 (diverged: <= 5 % above the edge) agree with the prediction,
    NaN otherwise (runs of ~1e5 steps each: ~1 min per scheme). ``small``: pcalm_deep's time
    constants, semi_implicit and heun, predictions only (seconds; tests/test_delay.py checks
    the prediction by runs); ``check``: run the runs (False: predictions only)."""
    models = list(models or (("pcalm_deep",) if small else SHIPPED))
    schemes = tuple(schemes or (("semi_implicit", "heun") if small else EDGE_SCHEMES))
    shape = (len(models), len(schemes))
    pred_k, meas_k = np.full(shape, np.nan), np.full(shape, np.nan)
    r_at, r_above, wall = (np.full(shape, np.nan) for _ in range(3))
    dts = np.full(len(models), np.nan)
    for i, name in enumerate(models):
        method, tau_h, tau_l, tau_e, rho = SHIPPED[name]
        cfg_of_dt = lambda dt: load_config(edge_model(True, method, tau_h, tau_l, tau_e, rho,
                                                      dt))
        t0 = time.perf_counter()
        dts[i], first = resolving_dt(cfg_of_dt)
        cfg = cfg_of_dt(dts[i])
        for j, scheme in enumerate(schemes):
            if scheme == "discrete" and tau_e > 0:
                continue            # the paper's algorithm has instantaneous errors
            if j:
                t0 = time.perf_counter()
            edge = first if scheme == "semi_implicit" else predicted_delay_max(cfg, scheme)
            pred_k[i, j], r_at[i, j], r_above[i, j] = edge.steps, edge.radius_at, \
                edge.radius_above
            if check and not small and math.isfinite(edge.radius_above):
                rows = check_delay_prediction(cfg, scheme, edge)
                ok = all(r["predicted"] == r["observed"] for r in rows)
                meas_k[i, j] = edge.steps if ok else math.nan
            wall[i, j] = time.perf_counter() - t0
    coords = {"model": ("model", models, var_attrs("model")),
              "scheme": ("scheme", list(schemes), var_attrs("scheme"))}
    dims = ("model", "scheme")
    taus = np.array([[SHIPPED[m][1], SHIPPED[m][2] or math.inf, SHIPPED[m][3], SHIPPED[m][4]]
                     for m in models])
    return xr.Dataset(
        {"predicted_steps": (dims, pred_k, var_attrs("predicted delay edge", "steps",
                                                     "largest stable delay (augmented map)")),
         "predicted_ms": (dims, pred_k * dts[:, None],
                          var_attrs("predicted delay edge", "ms", "largest stable delay x dt")),
         "measured_steps": (dims, meas_k, var_attrs("measured delay edge", "steps",
                                                    "edge confirmed by runs at edge, edge + 1")),
         "radius_at_edge": (dims, r_at, var_attrs("spectral radius at the edge", None, "")),
         "radius_above_edge": (dims, r_above, var_attrs("spectral radius one step above",
                                                        None, "")),
         "wall_s": (dims, wall, var_attrs("wall time", "s", "prediction and check")),
         "dt": (("model",), dts, var_attrs("dt", "ms", "the step of the model's prediction")),
         "tau_h": (("model",), taus[:, 0], var_attrs("tau_h", "ms", "")),
         "tau_lambda": (("model",), taus[:, 1], var_attrs("tau_lambda", "ms", "inf: PC")),
         "tau_e": (("model",), taus[:, 2], var_attrs("tau_e", "ms", "")),
         "rho": (("model",), taus[:, 3], var_attrs("rho", None, ""))},
        coords=coords,
        attrs={"description": "delay stability edge per scheme, linear network 4x4 (synthetic "
                              "data, O = 2), the shipped models' time constants",
               "config": load_config(edge_model(True)).to_yaml()})


def delay_propagation(delays=(0, 1, 2, 4), depths=None, small: bool = True,
                      dt: float = 0.25, scheme: str = "semi_implicit") -> xr.Dataset:
    """Credit arrival at the input layer vs depth L for delays of ``delays`` steps (dt ms),
    in a linear PC-ALM net with the spec's rates (eta_h = 0.24, alpha = 1 per ms: tau_h =
    1/0.24 ms, tau_lambda = 1 ms), from the feed-forward start. Arrival: the time layer 1's
    credit reaches half its BP value (``ctpc.analysis.arrival_scaling``, reference
    'bp_adjoint', which does not depend on the run length). Budget 8 L ms + 4 L d (the wave's
    ~2 L ms at d = 0, with margin for the slower delayed wave). Returns arrival time per
    (delay, depth), the fitted exponent and speed per delay, the theory speeds, wall times."""
    from ctpc.analysis import arrival_scaling
    depths = list(depths or ([8, 16, 32] if small else [8, 16, 32, 64]))
    n, b = (8, 8) if small else (16, 16)
    tau_h, tau_l = 1 / 0.24, 1.0
    arr = np.full((len(delays), len(depths)), np.nan)
    expo, speed, wall = (np.full(len(delays), np.nan) for _ in range(3))
    status = np.full((len(delays), len(depths)), "", dtype=object)
    for i, k in enumerate(delays):
        runs = []
        t0 = time.perf_counter()
        for L in depths:
            d = k * dt
            steps = int(round((8 * L + 4 * L * d) / dt))
            ds = simulate({
                "dtype": "float64", "device": "cpu", "seed": 0,
                "network": {"width": n, "depth": L, "activation": "linear"},
                "data": {"source": "digits", "batch_size": b},
                "dynamics": {"method": "pcalm", "rho": 1.0, "tau_h": tau_h,
                             "tau_lambda": tau_l, "delay": d},
                "integrator": {"scheme": scheme, "dt": dt, "steps": steps},
                "record": {"every": 1, "variables": []}})
            runs.append(ds)
        wall[i] = time.perf_counter() - t0
        res = arrival_scaling(runs, 0.5, "bp_adjoint")
        arr[i] = res.arrival_time.values
        status[i] = [r.attrs["status"] for r in runs]
        expo[i], speed[i] = float(res.exponent), float(res.speed_from_depths)
    delays_ms = np.asarray(delays, float) * dt
    coords = {"delay": ("delay", list(delays), var_attrs("delay", "steps", "delay in steps")),
              "network.depth": ("network.depth", depths, var_attrs("depth L", "1", ""))}
    return xr.Dataset(
        {"arrival_time": (("delay", "network.depth"), arr,
                          var_attrs("arrival time", "ms", "layer 1 credit reaches 1/2 BP")),
         "status": (("delay", "network.depth"), status.astype(str), var_attrs("status")),
         "exponent": ("delay", expo, var_attrs("exponent p", "1", "t_arrival ~ L^p")),
         "speed": ("delay", speed, var_attrs("speed", "layers/ms", "1 / slope of t vs L")),
         "delay_ms": ("delay", delays_ms, var_attrs("delay", "ms", "")),
         "speed_wave": ((), 1 / math.sqrt(tau_h * tau_l),
                        var_attrs("wave speed", "layers/ms", "1/sqrt(tau_h tau_lambda)")),
         "speed_bound": ("delay", np.where(delays_ms > 0, 1 / np.maximum(delays_ms, 1e-300),
                                           np.inf),
                         var_attrs("delay bound", "layers/ms", "one layer per delay")),
         "wall_s": ("delay", wall, var_attrs("wall time", "s", "runs of this delay"))},
        coords=coords,
        attrs={"dt_ms": dt, "scheme": scheme, "width": n, "batch": b,
               "description": "credit arrival at the input layer vs depth, with delays"})
