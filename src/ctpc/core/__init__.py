"""The mathematics: the network and its pure passes (:mod:`.network`), the one right-hand side
(:mod:`.dynamics`), BP by autograd (:mod:`.reference`), the solvers (:mod:`.integrators`; their
stochastic forms, :mod:`.noise`; the delay equations, :mod:`.delay`; the choice among them,
:mod:`.solvers`), the step loop (:mod:`.engine`), compiled Gauss-Seidel steps
(:mod:`.compiled`) and the lambda_max estimators of the step-size rule (:mod:`.stepsize`). Torch only; no configs are read here
beyond the validated schema."""
