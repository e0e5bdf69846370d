"""``python -m ctpc.train``: the command's entry point. Its code is :mod:`ctpc.cli.train`; this
file only runs as a script, so that the name ``ctpc.train`` stays free for the API."""
import sys

if __name__ != "__main__":
    raise ImportError("ctpc.train is the command 'python -m ctpc.train'; its module is "
                      "ctpc.cli.train")

from ctpc.cli.train import main  # noqa: E402

sys.exit(main())
