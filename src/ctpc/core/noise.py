"""Noisy neurons: independent white noise on the activity, error and multiplier neurons.

The dynamics of :mod:`ctpc.core.dynamics` become an Ito SDE with additive noise,

    dS_pop = f_pop(S) dt + sigma_pop dW_pop,        pop in (h, lambda, e),

sigma in the variable's unit per sqrt(ms) (``dynamics.noise``): over a step dt each neuron
receives sigma sqrt(dt) xi, xi ~ N(0, 1), on top of its deterministic update. The schemes:

* ``euler``: Euler-Maruyama, S + dt f(S) + sigma dW (strong order 1/2, weak order 1; with
  additive noise the strong order is 1 too);
* ``heun``: stochastic Heun (additive noise): predictor S~ = S + dt f(S) + sigma dW, corrector
  S + dt/2 (f(S) + f(S~)) + sigma dW, the same dW in both (weak order 2 for linear drift,
  1 in general; strong order 1). Written for any explicit tableau (every stage gets the step's
  dW), which for Heun is exactly the above;
* ``semi_implicit``: Gauss-Seidel Euler-Maruyama: h's primal step, then sigma_h dW_h added to h
  before the network pass; e's and lambda's dual updates (in that order, each from the new
  residual) each followed by its own sigma dW.

``rk4`` and ``discrete`` have no stochastic form here (refused by the config,
:func:`ctpc.config.schema._check_biology`).

**The noise is a pure function of (replica seed, stream, step index).** The draws of replica
r, population pop, for the steps ``[b BLOCK, (b + 1) BLOCK)`` of a presentation come from one
generator seeded by ``SeedSequence([seed_r, NOISE_TAG, *stream, pop, b])`` (a stream of its own:
the weight and data draws never use NOISE_TAG). So

* a replica of a stacked run sees the noise of its own single run (its generator does not know
  the other replicas; a population's draws do not depend on which other populations are noisy);
* the step counter lives in the solver's carry (:class:`NoisyCarry`): the divergence replay of
  :func:`ctpc.core.engine.integrate`, which re-steps a chunk from a snapshot, draws the same
  numbers, and ``integrator.check_every`` changes nothing (BLOCK is a module constant);
* a training run gives each update's presentation its own stream (:func:`update_stream`), so a
  resumed run is bit-identical to an uninterrupted one.

One block is drawn per replica and population every BLOCK steps (no Python loop over replicas
per step) and cached, keyed by block, shape, dtype and device (the last :data:`CACHE_BLOCKS`
blocks). Draws are made on the state's device, in its dtype: CPU and CUDA (and float32 and
float64) runs see different, equally distributed, noise.

A frozen (diverged) replica has dt = 0, so sqrt(dt) = 0 makes its noise 0 as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from ctpc.core.dynamics import POP_ERR, POP_H, POP_LAM, Params, Scalar, per_replica
from ctpc.core.integrators import ExplicitRK, GaussSeidel, axpy_, _nonzero
from ctpc.core.network import Residuals

BLOCK = 8                  # steps drawn at once per replica and population
CACHE_BLOCKS = 2           # blocks kept (a replay usually starts within the last one or two)
NOISE_TAG = 0x6E6F697365   # "noise": an entropy word the weight and data draws never use
SIMULATION_STREAM = (0,)   # a simulation's presentation (and the training probe's)


def update_stream(u: int) -> tuple[int, ...]:
    """The noise stream of training update ``u`` (0-based): its own for every update."""
    return (1, int(u))


@dataclass(frozen=True, eq=False)
class Noise:
    """The noise of R replicas: ``sigma`` one entry per population index (POP_H, POP_LAM,
    POP_ERR; length P of the state), each a python float when every replica shares it, else a
    [R, 1, 1] tensor (units: the variable's per sqrt(ms)); ``seeds`` [R] the replicas' config
    seeds; ``stream`` which presentation (a tuple of non-negative ints)."""
    sigma: tuple[Scalar, ...]
    seeds: tuple[int, ...]
    stream: tuple[int, ...] = SIMULATION_STREAM
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def pops(self) -> tuple[int, ...]:
        """The populations that receive noise (some replica's sigma > 0)."""
        return tuple(i for i, s in enumerate(self.sigma) if _nonzero_sigma(s))

    def on_stream(self, stream: tuple[int, ...]) -> "Noise":
        """The same noise on another stream (a cache of its own)."""
        return replace(self, stream=tuple(int(s) for s in stream), _cache={})

    def block(self, b: int, like: torch.Tensor) -> torch.Tensor:
        """Block ``b`` of N(0, 1) draws for a state like ``like`` [P, H, R, B, N]:
        [BLOCK, len(pops), H, R, B, N] (cached)."""
        key = (b, tuple(like.shape), like.dtype, like.device)
        out = self._cache.get(key)
        if out is None:
            _, H, R, B, N = like.shape
            out = torch.empty(BLOCK, len(self.pops), H, R, B, N, dtype=like.dtype,
                              device=like.device)
            for j, pop in enumerate(self.pops):
                for r, seed in enumerate(self.seeds):
                    g = torch.Generator(device=like.device)
                    g.manual_seed(_seed_of(seed, self.stream, pop, b))
                    out[:, j, :, r] = torch.randn(BLOCK, H, B, N, generator=g,
                                                  dtype=like.dtype, device=like.device)
            while len(self._cache) >= CACHE_BLOCKS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = out
        return out

    def draws(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """The N(0, 1) draws of step ``k`` (0-based in the presentation): [len(pops), H, R, B,
        N], a view into the cached block."""
        return self.block(k // BLOCK, like)[k % BLOCK]

    def amplitudes(self, dt: Scalar) -> tuple[Scalar, ...]:
        """sigma sqrt(dt) of each noisy population (float, or [R, 1, 1] when sigma or dt
        differs between replicas)."""
        root = dt.sqrt() if isinstance(dt, torch.Tensor) else math.sqrt(dt)
        return tuple(self.sigma[pop] * root for pop in self.pops)

    def add_(self, S: torch.Tensor, k: int, dt: Scalar) -> torch.Tensor:
        """S += sigma sqrt(dt) xi_k on every noisy population, in place (returns S)."""
        xi = self.draws(k, S)
        for j, (pop, amp) in enumerate(zip(self.pops, self.amplitudes(dt))):
            axpy_(S[pop], xi[j], amp)
        return S


def _nonzero_sigma(s: Scalar) -> bool:
    return bool((s != 0).any()) if isinstance(s, torch.Tensor) else s != 0


def _seed_of(seed: int, stream: tuple[int, ...], pop: int, b: int) -> int:
    """A 63-bit generator seed for (replica seed, stream, population, block)."""
    state = np.random.SeedSequence([int(seed), NOISE_TAG, *stream, pop, b]).generate_state(
        2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def noise_of(sigmas: list[tuple[float, float, float]], seeds: list[int], n_pop: int,
             device=None, dtype=None) -> Noise | None:
    """The :class:`Noise` of R replicas from per-replica (sigma_h, sigma_e, sigma_lambda) and
    config seeds, for a state of ``n_pop`` populations; None when every sigma is 0 (the
    deterministic solvers run, unchanged)."""
    if not any(any(s) for s in sigmas):
        return None
    by_pop = {POP_H: [s[0] for s in sigmas], POP_LAM: [s[2] for s in sigmas],
              POP_ERR: [s[1] for s in sigmas]}
    sigma = tuple(per_replica(by_pop[i], device, dtype) for i in range(n_pop))
    return Noise(sigma, tuple(int(s) for s in seeds))


# ------------------------------------------------------------------------------- solvers
@dataclass(frozen=True)
class NoisyCarry:
    """A noisy solver's carry: the deterministic solver's carry and ``k``, the steps taken in
    this presentation (the noise clock)."""
    inner: Any
    k: int = 0


@dataclass(frozen=True)
class NoisyRK:
    """Euler-Maruyama (``euler``) and stochastic Heun (``heun``) over an explicit tableau:
    every stage and the result get the step's sigma dW (additive noise). Pure
    (``in_place = False``), as :class:`~ctpc.core.integrators.ExplicitRK`."""
    base: ExplicitRK
    noise: Noise
    in_place: ClassVar[bool] = False

    def on_stream(self, stream: tuple[int, ...]) -> "NoisyRK":
        """This solver with the noise of another presentation (training: one per update)."""
        return replace(self, noise=self.noise.on_stream(stream))

    def init(self, S: torch.Tensor, p: Params) -> NoisyCarry:
        return NoisyCarry(self.base.init(S, p), 0)

    def start(self, p: Params, reuse=None) -> NoisyCarry:
        return NoisyCarry(self.base.start(p), 0)

    def state(self, carry: NoisyCarry) -> torch.Tensor:
        return carry.inner

    def residuals(self, carry: NoisyCarry, p: Params) -> Residuals:
        return self.base.residuals(carry.inner, p)

    def snapshot(self, carry: NoisyCarry) -> NoisyCarry:
        """The carry itself: steps never modify it."""
        return carry

    def with_state(self, carry: NoisyCarry, S: torch.Tensor, p: Params, reset=()) -> NoisyCarry:
        """A carry at S that keeps the noise clock: every replica goes on with the noise of its
        own run (a frozen replica, dt = 0, receives none)."""
        return NoisyCarry(self.base.init(S, p), carry.k)

    def step(self, carry: NoisyCarry, p: Params, dt: Scalar, last: bool = False) -> NoisyCarry:
        """y + dt sum_i b_i k_i + sigma dW, the stages y + dt sum_j a_ij k_j + sigma dW (new
        tensors)."""
        y, k = carry.inner, carry.k
        rhs = self.base.dyn.rhs
        tab = self.base.info.tableau
        ks = [rhs(y, p)]
        for row in tab.a:
            ks.append(rhs(self.noise.add_(_combine(y, ks, row, dt), k, dt), p))
        return NoisyCarry(self.noise.add_(_combine(y, ks, tab.b, dt), k, dt), k + 1)

    def advance(self, carry: NoisyCarry, p: Params, dt: Scalar, n: int,
                last: bool) -> NoisyCarry:
        for _ in range(n):
            carry = self.step(carry, p, dt)
        return carry


def _combine(y: torch.Tensor, ks, coeffs, dt: Scalar) -> torch.Tensor:
    out = y.clone()
    for coeff, kk in zip(coeffs, ks):
        if coeff:
            axpy_(out, kk, dt * coeff)
    return out


@dataclass(frozen=True)
class NoisyGaussSeidel:
    """Gauss-Seidel Euler-Maruyama (``semi_implicit``): the primal step, sigma_h dW added to h,
    the network pass, then e's update + sigma_e dW and lambda's update (from the noisy e) +
    sigma_lambda dW. ``in_place = True``: the inner :class:`~ctpc.core.integrators.GSCarry` is
    stepped in place (take :meth:`snapshot` to keep a carry)."""
    base: GaussSeidel
    noise: Noise
    in_place: ClassVar[bool] = True

    def on_stream(self, stream: tuple[int, ...]) -> "NoisyGaussSeidel":
        """This solver with the noise of another presentation (training: one per update)."""
        return replace(self, noise=self.noise.on_stream(stream))

    def init(self, S: torch.Tensor, p: Params) -> NoisyCarry:
        return NoisyCarry(self.base.init(S, p), 0)

    def start(self, p: Params, reuse: NoisyCarry | None = None) -> NoisyCarry:
        return NoisyCarry(self.base.start(p, None if reuse is None else reuse.inner), 0)

    def state(self, carry: NoisyCarry) -> torch.Tensor:
        return carry.inner.S

    def residuals(self, carry: NoisyCarry, p: Params) -> Residuals:
        return carry.inner.resid

    def snapshot(self, carry: NoisyCarry) -> NoisyCarry:
        """A copy of the buffers, with the clock."""
        return NoisyCarry(carry.inner.clone(), carry.k)

    def with_state(self, carry: NoisyCarry, S: torch.Tensor, p: Params, reset=()) -> NoisyCarry:
        """A carry at S that keeps the noise clock: every replica goes on with the noise of its
        own run (a frozen replica, dt = 0, receives none)."""
        return NoisyCarry(self.base.init(S, p), carry.k)

    def step(self, carry: NoisyCarry, p: Params, dt: Scalar, last: bool = False) -> NoisyCarry:
        c, k = carry.inner, carry.k
        base, rates = self.base, p.rates
        xi = self.noise.draws(k, c.S)
        amp = dict(zip(self.noise.pops, self.noise.amplitudes(dt)))
        slot = {pop: j for j, pop in enumerate(self.noise.pops)}
        base._primal(c, p, dt * rates.k_h)
        if POP_H in amp:
            axpy_(c.h, xi[slot[POP_H]], amp[POP_H])
        base._network_pass(c, p)
        if c.leaky:                                         # e += c_e (r - e) + sigma_e dW
            c_e = dt * rates.k_e
            axpy_(c.err, c.err, -c_e)
            axpy_(c.err, c.r, c_e)
            if POP_ERR in amp:
                axpy_(c.err, xi[slot[POP_ERR]], amp[POP_ERR])
        if _nonzero(rates.k_lam):                           # lam += c_lam e
            axpy_(c.lam, c.err, dt * rates.k_lam)
        if POP_LAM in amp:                                  # + sigma_lam dW
            axpy_(c.lam, xi[slot[POP_LAM]], amp[POP_LAM])
        return NoisyCarry(c, k + 1)

    def advance(self, carry: NoisyCarry, p: Params, dt: Scalar, n: int,
                last: bool) -> NoisyCarry:
        """``n`` calls of :meth:`step` (always eager: the compiled programs have no noise)."""
        for j in range(n):
            carry = self.step(carry, p, dt, last=last and j + 1 == n)
        return carry


def noisy_solver(base, noise: Noise):
    """The stochastic form of a deterministic solver of scheme euler, heun or semi_implicit."""
    name = base.info.name
    if name in ("euler", "heun"):
        return NoisyRK(base, noise)
    if name == "semi_implicit":
        return NoisyGaussSeidel(base, noise)
    raise ValueError(f"scheme {name!r} has no stochastic form; use euler, semi_implicit or heun")
