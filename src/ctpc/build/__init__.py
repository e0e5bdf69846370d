"""From a validated config to a run's inputs: resolving it against the data, the weights and
the machine (:mod:`.resolve`, :mod:`.auto_step`), and the torch objects it describes
(:mod:`.objects`: network, weights, batch, rates, device and threads)."""
