"""The one family of refusals: an input that a run refuses before any work starts.

Each kind has its own class, so that a name says one thing (a config error is a config error),
and all share :class:`InputError`, which the commands turn into a message and exit code 2."""


class InputError(ValueError):
    """Something a run refuses before any work: a config, an output path, a results file, a
    data file, a download or a code-generation target. The message names the key or the file
    and how to fix it; ``python -m ctpc.*`` prints it and exits with code 2."""
