"""The Brian2 backend: the same PC / PC-ALM network as Brian2 NeuronGroups and Synapses.

    run(cfg, progress=True) -> RunResult     # what ctpc.simulate calls for backend: brian2
    equations_text(cfg) -> str               # the generated equations (--show-equations)
    model_spec(cfg) -> ModelSpec             # the same description as data
    build(cfg, edit=None) -> Brian2Net       # the Brian2 objects, to extend in Brian2

Modules: ``equations`` (equations from the config), ``network`` (Brian2 objects and schedule),
``coupling`` (the network_operation construction), ``methods`` (state updaters), ``targets``
(code generation, build directory, compile errors), ``runner`` (run, record, divergence),
``text`` (printing).
"""
from ctpc.sim.backends.brian2_backend.equations import model_spec
from ctpc.sim.backends.brian2_backend.network import Brian2Net
from ctpc.sim.backends.brian2_backend.runner import build, run
from ctpc.sim.backends.brian2_backend.targets import Brian2BuildError
from ctpc.sim.backends.brian2_backend.text import equations_text

__all__ = ["run", "equations_text", "model_spec", "build", "Brian2Net", "Brian2BuildError"]
