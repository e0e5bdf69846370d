"""``python -m ctpc.sweep``: the command's entry point (its code is :mod:`ctpc.cli.sweep`)."""
import sys

from ctpc.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
