"""ctpc: continuous-time simulator for predictive coding (PC) and PC-ALM networks.

    import ctpc
    cfg = ctpc.load_config("models/pcalm_deep.yaml", ["integrator.steps=64"])
    ds = ctpc.simulate(cfg)                 # xarray.Dataset; see README "Dataset schema"
    ds = ctpc.open_results("runs/pcalm_deep.nc")
"""
from ._version import __version__
from .config import Config, ConfigError
from .io import open_results
from .loading import load_config
from .run import simulate

__all__ = ["Config", "ConfigError", "load_config", "open_results", "simulate", "__version__"]
