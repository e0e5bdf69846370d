"""ctpc: continuous-time simulator for predictive coding (PC) and PC-ALM networks.

    import ctpc
    cfg = ctpc.load_config("models/pcalm_deep.yaml", ["integrator.steps=64"])   # resolved
    ds = ctpc.simulate(cfg)                 # xarray.Dataset; see docs/guide/dataset.md
    ds = ctpc.open_results("runs/pcalm_deep.nc")
    ds = ctpc.train("models/train_digits.yaml", out="runs/train_digits.nc")

``load_config`` reads, validates and resolves a config once: it returns a
:class:`ctpc.build.resolve.Resolved` config, a :class:`Config` (``cfg.network.depth``,
``cfg.to_dict()``) that cannot be changed, which ``simulate`` and ``train`` run as it is, reading
no file and resolving nothing again (a YAML path or a dict given to them is resolved once). To
vary it, load it again with overrides: ``ctpc.load_config(cfg, ["network.depth=16"])``.

The functions that run models (``load_config``, ``simulate``, ``train``) are imported on first
use, so
``import ctpc; ctpc.open_results(...)`` (reading and analysing results) never loads torch.
"""
import importlib

from ctpc.common.version import __version__
from ctpc.common.errors import InputError
from ctpc.config.schema import Config, ConfigError
from ctpc.results.dataset import open_results

_ON_FIRST_USE = {"load_config": "ctpc.build.resolve", "simulate": "ctpc.sim.simulation",
                 "train": "ctpc.training"}

__all__ = ["Config", "ConfigError", "InputError", "load_config", "open_results", "simulate", "train",
           "__version__"]


def __getattr__(name: str):
    if name in _ON_FIRST_USE:
        value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ctpc' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_ON_FIRST_USE))
