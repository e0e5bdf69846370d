"""Linear stability of the PC / PC-ALM flow and of each time-stepping scheme (spec section 5.2).

Everything is derived from the simulator's own code, so a prediction is about exactly the
dynamics that run: the continuous Jacobian is the derivative of ``Dynamics.rhs`` and a scheme's
one-step map is the derivative of its ``step``, both at the feed-forward point (h = feed-forward,
lambda = 0, e = 0) of one sample, taken by central differences. For linear networks the maps are
affine, so the differences are exact (to round-off) at any step size; for tanh/ReLU they are the
local linearisation. Columns are evaluated all at once: a batch of n copies of the sample, copy j
perturbed along basis vector j (samples are independent, so the batch is n independent systems).

Main entry points: :func:`predicted_dt_max`, :func:`stability_table`, :func:`check_prediction`,
and, for the step-size rule (eta_h = 1/lambda_max, ``state_lr: auto``),
:func:`ctpc.build.auto_step.activity_hessian_lambda_max`.

This module is a study: it sits above :mod:`ctpc.sim.simulation`, whose ``simulate`` it calls to check a
prediction against real runs.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

from ctpc.config.schema import Config
from ctpc.core.dynamics import POP_ERR, POP_H, POP_LAM, Params
from ctpc.core.solvers import make_solver
from ctpc.build.objects import build_model
from ctpc.build.resolve import in_float64_on_cpu
from ctpc.core.reference import bp_reference
from ctpc.sim.simulation import simulate
from ctpc.common.schemes import SCHEME_NAMES, SCHEMES

# A one-step map with spectral radius above 1 + STABLE_TOL is unstable. Dense eigenvalues of
# these well-scaled matrices carry ~1e-13 round-off; 1e-9 is far above it and far below any
# growth a run could show in a realistic number of steps.
STABLE_TOL = 1e-9
DENSE_MAX = 2500   # state dimension up to which dense eigen-decompositions are used
# Where to linearise: the feed-forward start (h_ff, lambda = 0, e = 0), or PC-ALM's fixed
# point (h_ff, lambda = -BP adjoint, e = 0; spec 5.1). They coincide for linear networks.
POINTS = ("feedforward", "equilibrium")


def _float64(cfg: Config) -> Config:
    return in_float64_on_cpu(cfg)      # resolved once; nothing is read again


class Linearisation:
    """One sample's dynamics linearised at its feed-forward point.

    States here are one replica whose batch holds k copies of the sample: [P, H, 1, k, N]."""

    def __init__(self, cfg: Config, sample: int = 0, point: str = "feedforward"):
        if point not in POINTS:
            raise ValueError(f"point must be one of {POINTS}, got {point!r}")
        self.cfg = cfg = _float64(cfg)
        model = build_model(cfg, torch.device("cpu"))
        self.net, self.dyn, self.weights, self.rates = model.net, model.dyn, model.weights, \
            model.rates
        self.x, self.y = model.x[:, sample:sample + 1], model.y[:, sample:sample + 1]
        self.tau_h, self.tau_lambda = cfg.rates()
        p = self.params(1)
        # Only populations that evolve: PC's lambda is identically 0, not a neutral mode.
        self.pops = [POP_H] + ([POP_LAM] if self.rates.has_multipliers() else []) + \
            ([POP_ERR] if self.dyn.leaky else [])
        self.S0 = self.dyn.initial_state(p)
        if point == "equilibrium":
            if not self.rates.has_multipliers():
                raise ValueError("point='equilibrium' is known in closed form for PC-ALM only "
                                 "(h = feed-forward, lambda = -BP adjoint); use 'feedforward'")
            self.S0[POP_LAM] = -bp_reference(self.net, self.weights, self.x, self.y).adjoints
        self.block = (len(self.pops), self.net.n_hidden, self.net.width)
        self.n = math.prod(self.block)
        self.eps = 1.0 if cfg.network.activation == "linear" else 1e-5

    def params(self, copies: int) -> Params:
        """Params of one replica whose batch is ``copies`` copies of the sample."""
        return self.dyn.params(self.weights, self.x.expand(-1, copies, -1),
                               self.y.expand(-1, copies, -1), self.rates)

    # ------------------------------------------------------------------ maps and matrices
    def rhs_map(self):
        return lambda p: (lambda S: self.dyn.rhs(S, p))

    def step_map(self, scheme: str, dt: float):
        solver = make_solver(self.dyn, scheme, inner_steps=self.cfg.integrator.inner_steps)
        return lambda p: (lambda S: solver.state(solver.step(solver.init(S, p), p, dt)))

    def apply(self, factory, V: torch.Tensor) -> torch.Tensor:
        """Derivative of the map along each row of V [k, n] -> [k, n] (central difference)."""
        k, (p, h, n) = V.shape[0], self.block
        f = factory(self.params(k))

        def at(delta):
            S = self.S0.expand(-1, -1, -1, k, -1).clone()
            S[self.pops] += delta.reshape(k, p, h, n).permute(1, 2, 0, 3).unsqueeze(2)
            return f(S)[self.pops].squeeze(2).permute(2, 0, 1, 3).reshape(k, p * h * n)
        with torch.no_grad():
            return (at(self.eps * V) - at(-self.eps * V)) / (2 * self.eps)

    def matrix(self, factory, chunk: int = 512) -> np.ndarray:
        cols = []
        eye = torch.eye(self.n, dtype=torch.float64)
        for start in range(0, self.n, chunk):
            cols.append(self.apply(factory, eye[start:start + chunk]))
        return torch.cat(cols).T.numpy()

    def operator(self, factory) -> LinearOperator:
        mv = lambda v: self.apply(factory, torch.as_tensor(np.real(v)).reshape(1, -1))[0].numpy()
        return LinearOperator((self.n, self.n), matvec=mv, dtype=np.float64)

    def constraint_matrix(self) -> np.ndarray:
        """A = dr/dh at the feed-forward point, [H*N, H*N] (dense; small networks)."""
        net, h = self.net, self.S0[POP_H]
        d = net.dphi(h, net.phi(h))
        m = net.n_hidden * net.width
        V = torch.eye(m, dtype=torch.float64).reshape(m, net.n_hidden, net.width)
        V = V.permute(1, 0, 2).unsqueeze(1)                  # [H, 1, m copies, N]
        dd = None if d is None else d.expand(-1, -1, m, -1)
        A = net.constraint_jvp(self.weights, V, dd)[:, 0]
        return A.permute(1, 0, 2).reshape(m, m).T.numpy()


# ---------------------------------------------------------------------------- spectra
def _dense(lin: Linearisation, method: str) -> bool:
    if method not in ("auto", "dense", "arnoldi"):
        raise ValueError(f"method must be 'auto', 'dense' or 'arnoldi', got {method!r}")
    return method == "dense" or (method == "auto" and lin.n <= DENSE_MAX)


def continuous_spectrum(cfg: Config, sample: int = 0, method: str = "auto", k: int = 8,
                        point: str = "feedforward") -> np.ndarray:
    """Eigenvalues (1/ms) of the linearised flow. Dense: all of them; Arnoldi (large systems):
    the k of largest magnitude and the k of largest real part."""
    lin = Linearisation(cfg, sample, point)
    if _dense(lin, method):
        return np.linalg.eigvals(lin.matrix(lin.rhs_map()))
    op = lin.operator(lin.rhs_map())
    return np.concatenate([arnoldi(op, k, w) for w in ("LM", "LR")])


def arnoldi(op: LinearOperator, k: int = 4, which: str = "LM") -> np.ndarray:
    """The k eigenvalues of largest magnitude ("LM") or real part ("LR") by ARPACK, made
    deterministic and robust: a seeded start vector, k >= 2 (the dominant eigenvalues of these
    maps are often a near-degenerate complex pair, which k = 1 resolves poorly) with ample Lanczos
    vectors, and a retry with more vectors and iterations if ARPACK does not converge (then the
    eigenvalues that did converge, or a clear error)."""
    n = op.shape[0]
    k = max(2, min(k, n - 2))
    v0 = np.random.default_rng(0).standard_normal(n)
    ncv = min(n - 1, max(2 * k + 1, 24))
    for attempt in range(3):
        try:
            return eigs(op, k=k, which=which, v0=v0, ncv=ncv, maxiter=50 * n * (attempt + 1),
                        tol=1e-13, return_eigenvectors=False)
        except ArpackNoConvergence as exc:
            partial = exc.eigenvalues
            ncv = min(n - 1, 2 * ncv)
    if partial is not None and len(partial):
        return np.asarray(partial)
    raise RuntimeError(f"ARPACK did not converge for this {n}-dimensional map; use "
                       "method='dense' (feasible up to a few thousand dimensions)")


def stability_polynomial(scheme: str):
    """R(z) of an explicit RK tableau: the one-step map of y' = mu y is y -> R(dt mu) y."""
    tab = SCHEMES[scheme].tableau
    a_rows, b = tab.a, tab.b
    s = len(b)
    A = np.zeros((s, s))
    for i, row in enumerate(a_rows, start=1):
        A[i, :len(row)] = row
    b = np.asarray(b)

    def R(z):
        z = np.asarray(z, dtype=complex)
        # R(z) = 1 + z b^T (I - zA)^{-1} 1 = 1 + sum_k z^{k+1} b^T A^k 1 (A nilpotent)
        out, term = np.ones_like(z), np.ones(s)
        for k in range(s):
            out = out + z ** (k + 1) * (b @ term)
            term = A @ term
        return out
    return R


def spectral_radius(cfg: Config, scheme: str, dt: float, sample: int = 0,
                    method: str = "auto", point: str = "feedforward",
                    lin: Linearisation | None = None) -> float:
    """Spectral radius of the scheme's one-step map at step dt (ms), taus held fixed."""
    lin = lin or Linearisation(cfg, sample, point)
    factory = lin.step_map(scheme, dt)
    if _dense(lin, method):
        return float(np.abs(np.linalg.eigvals(lin.matrix(factory))).max())
    return float(np.abs(arnoldi(lin.operator(factory), which="LM")).max())


def _first_instability(radius, dt_lo: float, dt_hi: float, rtol: float) -> float:
    """Smallest dt at which radius(dt) > 1 + STABLE_TOL: geometric scan, then bisection."""
    unstable = lambda dt: radius(dt) > 1 + STABLE_TOL
    if unstable(dt_lo):
        return 0.0
    lo = dt_lo
    while True:
        hi = lo * 1.25
        if hi > dt_hi:
            return math.inf
        if unstable(hi):
            break
        lo = hi
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    return 0.5 * (lo + hi)


def _samples(cfg: Config, samples) -> list[int]:
    if samples is not None:
        return list(samples)
    # Linear networks: A and the loss Hessian do not depend on the sample, so one suffices.
    return [0] if cfg.network.activation == "linear" else list(range(cfg.data.batch_size))


def predicted_dt_max(cfg: Config, scheme: str, samples=None, method: str = "auto",
                     point: str = "feedforward", rtol: float = 1e-7) -> float:
    """Largest stable dt (ms) of ``scheme`` for this network, with tau_h, tau_lambda, tau_e fixed
    at the config's values (for a paper-parameterised config: eta_h and alpha scale with dt).

    Explicit RK with a dense spectrum: |R(dt mu)| <= 1 for every continuous eigenvalue mu.
    Gauss-Seidel schemes (semi_implicit, discrete), or large systems: bisection on the spectral
    radius of the one-step map itself. Worst case over ``samples`` (default: sample 0 for linear
    networks, every sample of the batch otherwise). ``inf`` if never unstable up to 1e4 tau.

    For nonlinear networks this is local: past it the linearised point loses stability, but
    a saturating activation usually keeps the state bounded (sustained oscillation rather than
    divergence), so :func:`check_prediction`'s diverged/ok test is decisive for linear ones.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEME_NAMES}, got {scheme!r}")
    worst = math.inf
    for s in _samples(cfg, samples):
        lin = Linearisation(cfg, s, point)
        taus = [lin.tau_h, lin.tau_lambda] + ([cfg.dynamics.tau_e] if cfg.dynamics.tau_e else [])
        finite = [t for t in taus if math.isfinite(t)]
        lo, hi = 1e-4 * min(finite), 1e4 * max(finite)
        if not SCHEMES[scheme].gauss_seidel and _dense(lin, method):
            mu = np.linalg.eigvals(lin.matrix(lin.rhs_map()))
            R = stability_polynomial(scheme)
            radius = lambda dt: float(np.abs(R(dt * mu)).max())
        else:
            radius = lambda dt: spectral_radius(cfg, scheme, dt, method=method, lin=lin)
        worst = min(worst, _first_instability(radius, lo, hi, rtol))
    return worst


def closed_form_dt_max(cfg: Config, scheme: str, samples=None) -> float:
    """Spec 5.2's per-mode bounds from the singular values sigma of A (loss Hessian ignored,
    instantaneous errors, one primal step per dual step). With k = dt sigma^2/tau_h and
    a = dt/tau_lambda: semi-implicit is stable iff k rho < 2 and k(2 rho + a) < 4; explicit
    Euler iff a < rho and k(2 rho - a) < 4 (PC: k rho < 2 for both)."""
    if cfg.dynamics.tau_e > 0 or cfg.integrator.inner_steps != 1:
        raise ValueError("closed forms hold for instantaneous errors and inner_steps = 1 only")
    if scheme not in ("euler", "semi_implicit", "discrete"):
        raise ValueError(f"no closed form for scheme {scheme!r}; use predicted_dt_max")
    rho = cfg.dynamics.rho
    worst = math.inf
    for s in _samples(cfg, samples):
        lin = Linearisation(cfg, s)
        sig2 = np.linalg.svd(lin.constraint_matrix(), compute_uv=False).max() ** 2
        tau_h, tau_l = lin.tau_h, lin.tau_lambda
        if math.isinf(tau_l):                                  # PC: gradient descent
            dt = 2 * tau_h / (rho * sig2)
        elif scheme == "euler":
            disc = rho ** 2 - 4 * tau_h / (sig2 * tau_l)
            dt = tau_l * (rho - math.sqrt(disc)) if disc >= 0 else rho * tau_l
        else:
            dt = tau_l * (-rho + math.sqrt(rho ** 2 + 4 * tau_h / (sig2 * tau_l)))
        worst = min(worst, dt)
    return worst


def stability_table(cfg: Config, schemes=SCHEME_NAMES, method: str = "auto",
                    point: str = "feedforward") -> pd.DataFrame:
    """Predicted dt_max per scheme (and spec 5.2's closed form where it applies)."""
    rows = []
    for scheme in schemes:
        try:
            closed = closed_form_dt_max(cfg, scheme)
        except ValueError:
            closed = math.nan
        rows.append({"scheme": scheme,
                     "dt_max_ms": predicted_dt_max(cfg, scheme, method=method, point=point),
                     "closed_form_ms": closed})
    df = pd.DataFrame(rows).set_index("scheme")
    df.attrs["units"] = {"dt_max_ms": "ms", "closed_form_ms": "ms"}
    return df


# ---------------------------------------------------------------------------- empirical check
def run_at(cfg: Config, scheme: str, dt: float, steps: int):
    """Integrate (float64, no traces) and return the dataset: status 'ok' or 'diverged'."""
    tau_h, tau_l = cfg.rates()
    raw = cfg.to_dict()
    raw["dynamics"].update(state_lr=None, alpha=None, tau_h=tau_h,
                           tau_lambda=tau_l if math.isfinite(tau_l) else math.inf)
    raw["integrator"] = {"scheme": scheme, "dt": dt, "steps": steps,
                         "inner_steps": cfg.integrator.inner_steps} \
        if scheme == "discrete" else {"scheme": scheme, "dt": dt, "steps": steps}
    raw.update(dtype="float64", device="cpu", output=None, sweep=None)
    raw["record"] = {"every": steps, "variables": []}
    return simulate(raw)


def check_prediction(cfg: Config, scheme: str, factors=(0.98, 1.02), steps: int | None = None,
                     dt_max: float | None = None) -> pd.DataFrame:
    """Run at factor x predicted dt_max and compare the outcome with the prediction.

    The number of steps is sized so that the predicted growth at the largest factor reaches
    1e13 (far past the divergence bound from an O(1e-3) start); a stable run cannot diverge
    however long it runs, so this only makes sure an unstable one has time to show it."""
    dt_max = predicted_dt_max(cfg, scheme) if dt_max is None else dt_max
    if steps is None:
        r = spectral_radius(cfg, scheme, max(factors) * dt_max)
        steps = 500 if r <= 1 else int(min(max(math.log(1e13) / math.log(r), 500), 200_000))
    rows = []
    for f in factors:
        ds = run_at(cfg, scheme, f * dt_max, steps)
        rows.append({"scheme": scheme, "factor": f, "dt_ms": f * dt_max, "steps": steps,
                     "predicted": "stable" if f < 1 else "unstable",
                     "observed": "stable" if ds.attrs["status"] == "ok" else "unstable",
                     "diverged_at_ms": ds.attrs.get("diverged_at", math.nan)})
    df = pd.DataFrame(rows)
    df["agrees"] = df.predicted == df.observed
    return df
