"""Checkpoints of a training run: everything needed to continue it bit for bit.

A checkpoint holds the explicit training state (:class:`~ctpc.training.update.LearnState`: the
parameters and the optimiser's state tensors, by field), the update count (which fixes the epoch,
the position in it and so the data order, whose permutations are seeded by ``seed`` and the
epoch), the per-update history and evaluations so far, the wall time so far, torch's RNG state,
and the run's identity (:func:`ctpc.config.identity.run_key`: the resolved configuration without its
labels, output, memory limit and run length, and the bytes of every input file it names).
``--resume`` refuses a checkpoint of another identity: a resumed run never reuses stale
results, and ``--resume --set training.epochs=N`` extends a run. Files are written under a
temporary name and renamed (atomic). Format 3 stores the optimiser state as those tensors;
a checkpoint of format 2, which holds ``torch.optim``'s ``state_dict()``, is converted on load
and resumes bit for bit all the same.

A checkpoint cannot run code: it holds tensors and plain Python values only (numbers, strings,
None, lists, tuples, dicts; numpy arrays are stored as tensors), and is read with
``torch.load(weights_only=True)``, whose unpickler refuses every other type before creating
it, so a crafted file is refused (exit 2) before anything in it runs. No type is added to
torch's allow-list.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ctpc.common.errors import InputError
from ctpc.config.schema import Config, ConfigError
from ctpc.config.paths import companion_path, write_atomically
from ctpc.config.identity import run_key
from ctpc.build.resolved import Resolved
from ctpc.training.loop import TrainState, eval_points
from ctpc.training.update import LearnState, Optimiser

# 1: pickled numpy arrays (read with weights_only=False; no longer read); 2: the optimiser's
# torch.optim state_dict() (read, converted); 3: the LearnState's optimiser tensors by field
FORMAT = 3
READS = (2, 3)
COMMON = ("digest", "update", "weights", None, "history", "evals", "diverged", "elapsed_s",
          "train_s", "torch_rng")        # None: the optimiser state's key (by format)
FIX = "rerun with --overwrite instead of --resume to start the run afresh"


def checkpoint_path(out: str | Path) -> Path:
    """``NAME.ckpt.pt`` beside the output ``NAME.nc`` (:func:`ctpc.config.paths.companion_path`)."""
    return companion_path(out, "checkpoint")


def weights_path(out: str | Path) -> Path:
    """``NAME.weights.npz`` beside the output ``NAME.nc``: the final weights, loadable by
    network.weights (:func:`ctpc.config.paths.companion_path`)."""
    return companion_path(out, "weights")


def run_digest(cfg: Config) -> str:
    """The run's identity, stored in its checkpoints (:func:`ctpc.config.identity.run_key`);
    a resolved config's input files are hashed from the reading that resolved it."""
    return run_key(cfg, dict(cfg.found.digests) if isinstance(cfg, Resolved) else None)


def _tensors(value):
    """numpy arrays (also inside lists and dicts) -> tensors, so that the checkpoint holds
    nothing weights_only=True refuses."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):         # a numpy scalar: its Python number
        return value.item()
    if isinstance(value, dict):
        return {k: _tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tensors(v) for v in value]
    return value


def _arrays(value):
    """The inverse of :func:`_tensors`."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_arrays(v) for v in value]
    return value


def save(path: Path, state: LearnState, progress: TrainState, digest: str) -> None:
    """Write the checkpoint of a run at ``progress`` (its ``elapsed_s``: the wall time so far)
    with the training state ``state`` to ``path`` (atomic)."""
    opt = state.opt
    blob = {"format": FORMAT, "digest": digest, "update": progress.update,
            "weights": [t.detach().cpu() for t in state.params.tensors],
            "opt_state": {} if opt is None else {
                f.name: [None if t is None else t.detach().cpu() for t in getattr(opt, f.name)]
                for f in dataclasses.fields(opt)},
            "history": _tensors(progress.history), "evals": _tensors(progress.evals),
            "diverged": progress.diverged,
            "elapsed_s": progress.elapsed_s, "train_s": progress.train_s,
            "torch_rng": torch.get_rng_state()}
    write_atomically(path, lambda tmp: torch.save(blob, tmp))


def _from_state_dict(sd: dict, n: int, optimiser: Optimiser) -> dict:
    """Format 2's ``torch.optim`` ``state_dict()`` as format 3's optimiser tensors by field (one
    entry per parameter tensor; None where torch.optim had no state yet), refused
    (ValueError) where ``load_state_dict`` would refuse it."""
    groups, state = sd["param_groups"], sd["state"]
    if len(groups) != 1:
        raise ValueError(f"it has {len(groups)} optimiser parameter groups, not 1")
    ids = list(groups[0]["params"])
    if len(ids) != n:
        raise ValueError(f"its optimiser has {len(ids)} parameters, not {n}")
    if optimiser.kind == "none":
        return {}
    names = {"adam": ("step", "exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}[
        optimiser.kind]
    return {name: [state[i][name] if i in state and name in state[i] else None for i in ids]
            for name in names}


def _unreadable(exc: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"it refers to the Python object {found.group(1)}, which a ctpc checkpoint of "
                f"this version (format {FORMAT}) never holds: it was written by an older ctpc "
                "or not by ctpc, and was refused unread (nothing in it ran)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Weights only load failed" in text:
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[-1])
        return (f"torch.load(weights_only=True) refuses it ({detail}): not a ctpc checkpoint, "
                "or damaged; refused unread (nothing in it ran)")
    first = lines[0].split(". ")[0].rstrip(".")[:200] if lines else type(exc).__name__
    return f"not a readable checkpoint ({first}): truncated, damaged or another format"


def load(path: Path, digest: str) -> dict:
    """The checkpoint at ``path``, refused (ConfigError naming the file and the fix) if it
    cannot be read safely or belongs to another run. Nothing in the file is executed."""
    where = f"--resume: the checkpoint {str(path)!r}"
    try:
        with warnings.catch_warnings():      # torch's notes on foreign pickle protocols
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is the user's input
        raise ConfigError(f"{where} cannot be used: {_unreadable(exc)}; {FIX}") from None
    if not isinstance(blob, dict) or "format" not in blob:
        raise ConfigError(f"{where} is not a ctpc training checkpoint; {FIX}")
    if blob["format"] not in READS:
        raise ConfigError(f"{where} has format {blob['format']!r}, which this version of ctpc "
                          f"(format {FORMAT}) does not read; {FIX}")
    opt_key = "opt_state" if blob["format"] == 3 else "optimizer"
    missing = [k for k in (opt_key if k is None else k for k in COMMON) if k not in blob]
    if missing:
        raise ConfigError(f"{where} is incomplete (no {', '.join(missing)}); {FIX}")
    if blob["digest"] != digest:
        raise ConfigError(
            f"{where} was written by a run with another configuration or other input files; "
            "resuming would mix results. Restore the original configuration and files (only "
            "training.epochs and training.max_updates may change), or rerun with --overwrite "
            "instead of --resume to start afresh")
    return blob


def restore(blob: dict, trainer_kwargs: dict, path: Path, setup) -> dict:
    """Trainer keyword arguments (state: the progress, learn: the parameters and the optimiser
    state) from a loaded checkpoint (format 3, or 2 converted), to continue the run ``setup``
    (its model's weights give the parameters' shapes, devices and dtypes). The run's
    evaluation points decide which of the checkpoint's evaluations are kept (a run extended
    with more updates has no evaluation at the old last update unless one of its own points
    falls there). A checkpoint that does not fit the run is a ConfigError naming it."""
    where = f"--resume: the checkpoint {str(path)!r}"
    weights = setup.model.weights
    try:
        saved = list(blob["weights"])
        if len(saved) != len(weights.tensors) or any(
                not isinstance(s, torch.Tensor) or s.shape != t.shape
                for s, t in zip(saved, weights.tensors)):
            raise ValueError("its weights do not have this network's shapes")
        evals = _arrays(blob["evals"])
        update = int(blob["update"])
        if update > setup.total_updates:
            t = setup.training
            raise ConfigError(
                f"{where} has {update} updates done, more than the "
                f"{setup.total_updates} of this run (training.epochs = {t.epochs}, "
                f"training.max_updates = {t.max_updates}); a run cannot be shortened: "
                f"give it at least {update} updates, or {FIX}")
        points = set(eval_points(setup))
        evals = [e for e in evals if e["update"] in points]
        history = _arrays(blob["history"])
        if not isinstance(history, dict) or any(
                not isinstance(v, np.ndarray) or len(v) != update for v in history.values()):
            raise ValueError("its history does not match its update count")
        state = TrainState(update=update, history=history, evals=evals,
                           diverged=list(blob["diverged"]), elapsed_s=float(blob["elapsed_s"]),
                           train_s=float(blob["train_s"]))
        optimiser = Optimiser.of(setup)
        opt = blob["opt_state"] if blob["format"] == 3 else \
            _from_state_dict(blob["optimizer"], len(saved), optimiser)
        if not isinstance(opt, dict):
            raise ValueError("its optimiser state is not a dict")
        # in tensors laid out as the model's (what copying into them gave)
        params = weights.like(torch.empty_like(t).copy_(s) for t, s in zip(weights.tensors,
                                                                          saved))
        learn = optimiser.load(params, opt)
        torch.set_rng_state(blob["torch_rng"])
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise ConfigError(f"{where} does not fit this run ({exc}); {FIX}") from None
    return {**trainer_kwargs, "state": state, "learn": learn}
