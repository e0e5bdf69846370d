"""ctpc: continuous-time simulator for predictive coding (PC) and PC-ALM networks.

    import ctpc
    cfg = ctpc.load_config("models/pcalm_deep.yaml", ["integrator.steps=64"])
    ds = ctpc.simulate(cfg)                 # xarray.Dataset; see README "Dataset schema"
    ds = ctpc.open_results("runs/pcalm_deep.nc")
"""
__version__ = "0.1.0"

from .config import Config, ConfigError, load_config  # noqa: E402
from .io import open_results  # noqa: E402
from .run import simulate  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config", "open_results", "simulate", "__version__"]
