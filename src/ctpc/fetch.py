"""``python -m ctpc.fetch``: the command's entry point. Its code is :mod:`ctpc.cli.fetch`; this
file only runs as a script, beside the other commands."""
import sys

if __name__ != "__main__":
    raise ImportError("ctpc.fetch is the command 'python -m ctpc.fetch'; its module is "
                      "ctpc.cli.fetch")

from ctpc.cli.fetch import main  # noqa: E402

sys.exit(main())
