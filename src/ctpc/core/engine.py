"""The one step loop: ``integrate`` runs a solver (:class:`ctpc.core.integrators.Solver`) for
n steps of size dt over R replicas, with an exact, per-replica divergence check that syncs
with the host once per chunk, not once per step.

Used by the torch backend (simulation), the training loop and the benchmarks.

Divergence. Every ``check_every`` steps the peak |S| of each replica is read once (one
reduction, one host sync per chunk). A replica whose state became non-finite or left its bound
at step k is *diverged at k*: a chunk that ends out of bounds is replayed from its start to find
k exactly, then to step k - 1 (the last bounded state); that state is kept as the replica's final
state, and the replica is frozen (the dt passed to its steps becomes 0) while the others go on.
The run ends early once every replica has diverged. The diverged step does not depend on ``check_every``.

The bound of a replica (:func:`divergence_bounds`) is the smaller of ``integrator.
divergence_bound`` (absolute) and ``integrator.growth_bound`` times the size of its initial state
(max(1, max |S_0|)): an unstable scheme whose state grows by orders of magnitude is caught even
when a short budget ends before the absolute bound is reached (a stable run stays within a few
per cent of its initial size; seen: at most 1.06x on every shipped model).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ctpc.core.dynamics import Params, Scalar, extremes_into, peak
from ctpc.core.integrators import Solver


@dataclass
class Integration:
    """The outcome of :func:`integrate` for R replicas."""
    carry: object                  # the solver's final carry (at each diverged replica's last bounded state)
    solver: Solver                 # the solver that ran
    steps_completed: np.ndarray    # [R] steps each replica completed within bounds
    diverged_step: list            # [R] first out-of-bounds step, or None
    frozen: dict = field(default_factory=dict)   # replica -> its last bounded state [P, H, B, N]
    peak_at_divergence: list = field(default_factory=list)   # [R] peak |S| there, or None
    dt: Scalar = None              # the step at the end (0 for frozen replicas)

    def final_state(self) -> torch.Tensor:
        """[P, H, R, B, N]: the end state, with each diverged replica's last bounded state."""
        S = self.solver.state(self.carry)
        if not self.frozen:
            return S
        S = S.clone()
        for r, state in self.frozen.items():
            S[:, :, r] = state
        return S


def divergence_bounds(S0: torch.Tensor, divergence_bound: float,
                      growth_bound: float) -> torch.Tensor:
    """[R] the |state| above which each replica has diverged: min(divergence_bound,
    growth_bound x max(1, max |S_0|))."""
    scale = peak(S0).clamp_min(1.0)
    return torch.clamp(growth_bound * scale, max=divergence_bound)


def divergence_reason(peak_value: float | None, divergence_bound: float) -> str | None:
    """'non-finite', 'bound' (above integrator.divergence_bound) or 'growth' (above
    growth_bound x the initial size, below the absolute bound); None if not diverged."""
    if peak_value is None:
        return None
    if not np.isfinite(peak_value):
        return "non-finite"
    return "bound" if peak_value > divergence_bound else "growth"


def integrate(solver: Solver, carry, p: Params, n_steps: int, *, dt: Scalar,
              check_every: int | None, bound: float | torch.Tensor = 1e6,
              observe: Callable | None = None,
              progress: Callable[[int], None] | None = None) -> Integration:
    """Run ``n_steps`` steps of size ``dt`` (ms; a float or [R, 1, 1]) of ``solver`` from
    ``carry`` (consumed, as by :meth:`~ctpc.core.integrators.Solver.step`) with parameters ``p``.

    ``check_every``: steps between divergence checks (host syncs; required, its one default is
    the config's ``integrator.check_every``); None: no check (the caller detects non-finite
    values itself, e.g. training at its own sync points). ``bound``: a number or one per
    replica [R] (see :func:`divergence_bounds`). ``observe(step, solver, carry)`` is called
    after every step (recording; the carry is the solver's: read it, do not keep it).
    ``progress(k)`` after every chunk of k steps. Unobserved chunks run by
    :meth:`~ctpc.core.integrators.Solver.advance`, observed ones step by step.

    The check looks at the state at the end of each chunk (one reduction and one sync per
    chunk). A chunk that ends out of bounds is replayed from its start, step by step, to find
    each replica's first step out of bounds exactly. (An excursion past the bound that returns
    inside the same chunk is not flagged; unstable states grow, they do not come back.)
    """
    R = p.x.shape[0]
    done = np.full(R, n_steps, dtype=np.int64)
    diverged: list = [None] * R
    at_peak: list = [None] * R
    alive = np.ones(R, dtype=bool)
    frozen: dict = {}
    chunk_len = check_every or n_steps or 1
    ends = torch.empty(2, R, device=p.x.device, dtype=p.x.dtype) if check_every else None
    step = 0
    while step < n_steps and alive.any():
        chunk = min(chunk_len, n_steps - step)
        # the carry at the chunk's start, to replay from (a copy for an in-place solver; only
        # when the chunk is checked: an unchecked run, e.g. training, never replays)
        snapshot = solver.snapshot(carry) if ends is not None else None
        if observe is None:
            # nothing to see between steps: the solver runs the chunk its own way (compiled)
            carry = solver.advance(carry, p, dt, chunk, step + chunk == n_steps)
        else:
            for j in range(chunk):
                carry = solver.step(carry, p, dt, last=step + j + 1 == n_steps)
                observe(step + j + 1, solver, carry)
        if ends is not None:
            extremes_into(solver.state(carry), ends)
            if bool(_out_of_bounds(ends, bound, alive).any()):     # the one host sync
                first, at = _locate(solver, solver.snapshot(snapshot), p, dt, chunk,
                                    step + chunk == n_steps, bound, alive)
                newly = np.flatnonzero(first < chunk)
                for r in newly:
                    diverged[r] = step + int(first[r]) + 1
                    done[r] = step + int(first[r])
                    at_peak[r] = float(at[r])
                frozen.update(_replay(solver, snapshot, p, dt, first, newly))
                alive[newly] = False
                # the carry moves to the frozen states, even when none is left alive: the
                # final carry's state is then the run's final state, and its network pass the
                # final one (a delayed run's, too)
                dt = _frozen_dt(dt, alive, p)
                S = solver.state(carry).clone()
                for r in newly:
                    S[:, :, r] = frozen[r]
                carry = solver.with_state(carry, S, p, reset=newly)
        step += chunk
        if progress is not None:
            progress(chunk)
    return Integration(carry, solver, done, diverged, frozen, at_peak, dt)


def _out_of_bounds(extremes: torch.Tensor, bound, alive: np.ndarray) -> torch.Tensor:
    """[..., R] True where a live replica's state is non-finite or beyond its bound, from
    (min, max) extremes [..., 2, R]."""
    peaks = torch.maximum(extremes[..., 1, :], extremes[..., 0, :].neg())
    bad = ~torch.isfinite(peaks) | (peaks > bound)
    return bad & torch.as_tensor(alive, device=bad.device)


def _locate(solver: Solver, carry, p: Params, dt: Scalar, chunk: int, ends_run: bool, bound,
            alive: np.ndarray):
    """Replay a chunk step by step from ``carry`` (consumed): ([R] first bad step index, chunk
    if none; [R] peak there)."""
    R = p.x.shape[0]
    ext = torch.empty(chunk, 2, R, device=p.x.device, dtype=p.x.dtype)
    for j in range(chunk):
        carry = solver.step(carry, p, dt, last=ends_run and j + 1 == chunk)
        extremes_into(solver.state(carry), ext[j])
    bad = _out_of_bounds(ext, bound, alive).cpu().numpy()
    first = _first_true(bad)
    peaks = torch.maximum(ext[:, 1], ext[:, 0].neg()).cpu().numpy()
    at = [peaks[min(first[r], chunk - 1), r] for r in range(R)]
    return first, at


def _first_true(bad: np.ndarray) -> np.ndarray:
    """[chunk, R] -> [R] index of the first True per column (chunk length if none)."""
    any_bad = bad.any(axis=0)
    return np.where(any_bad, bad.argmax(axis=0), bad.shape[0])


def _replay(solver: Solver, carry, p: Params, dt: Scalar, first: np.ndarray,
            replicas: np.ndarray) -> dict:
    """States [P, H, B, N] of ``replicas`` after ``first[r]`` steps from ``carry`` (consumed)."""
    targets = {int(first[r]): [] for r in replicas}
    for r in replicas:
        targets[int(first[r])].append(int(r))
    out = {}
    for k in range(max(targets) + 1):
        for r in targets.get(k, ()):
            out[r] = solver.state(carry)[:, :, r].clone()
        if k < max(targets):
            carry = solver.step(carry, p, dt, last=False)
    return out


def _frozen_dt(dt, alive: np.ndarray, p: Params):
    """dt as a [R, 1, 1] tensor with 0 for the replicas that are no longer alive."""
    mask = torch.as_tensor(alive, device=p.x.device, dtype=p.x.dtype).view(-1, 1, 1)
    return mask * dt
