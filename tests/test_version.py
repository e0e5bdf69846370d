"""The version is written once, in src/ctpc/common/version.py: the installed package's metadata
(pyproject.toml reads it) and ctpc.__version__ agree."""
from importlib.metadata import version

import ctpc
from ctpc.common.version import __version__


def test_one_version():
    assert version("ctpc") == __version__ == ctpc.__version__
