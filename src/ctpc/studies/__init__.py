"""Studies of the dynamics that run simulations: linear stability of the flow and of each
scheme (:mod:`.stability`)."""
