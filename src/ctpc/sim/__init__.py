"""Simulation: ``simulate`` (:mod:`.simulation`), what is recorded over time
(:mod:`.recording`), and the backends that integrate (:mod:`.backends`: torch, Brian2)."""
