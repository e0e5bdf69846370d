"""The commands: ``python -m ctpc.simulate | ctpc.train | ctpc.sweep | ctpc.fetch``
(:mod:`.simulate`, :mod:`.train`, :mod:`.sweep`, :mod:`.fetch`) and their shared error handling
and exit codes (:mod:`.common`)."""
