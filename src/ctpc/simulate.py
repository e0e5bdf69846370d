"""``python -m ctpc.simulate``: the command's entry point. Its code is :mod:`ctpc.cli.simulate`; this
file only runs as a script, so that the name ``ctpc.simulate`` stays free for the API."""
import sys

if __name__ != "__main__":
    raise ImportError("ctpc.simulate is the command 'python -m ctpc.simulate'; its module is "
                      "ctpc.cli.simulate")

from ctpc.cli.simulate import main  # noqa: E402

sys.exit(main())
