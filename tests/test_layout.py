"""The package layout: the API names and the ``python -m`` commands share names without
tricks, and a clone of the repository never shadows the installed package."""
import subprocess
import sys
from pathlib import Path

import pytest

import ctpc

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["simulate", "train"])
def test_api_functions_are_functions_and_the_command_files_refuse_import(name):
    """``ctpc.simulate`` / ``ctpc.train`` are the API functions; importing the command file
    fails with a message naming the command's module, and leaves the function in place."""
    function = getattr(ctpc, name)
    assert callable(function) and not isinstance(function, type(sys))
    with pytest.raises(ImportError, match=f"ctpc.cli.{name}"):
        __import__(f"ctpc.{name}")
    assert getattr(ctpc, name) is function


@pytest.mark.parametrize("command", ["simulate", "train", "sweep", "fetch"])
def test_every_command_runs_as_a_module(command):
    out = subprocess.run([sys.executable, "-m", f"ctpc.{command}", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"python -m ctpc.{command}" in out.stdout


def test_a_clone_named_ctpc_beside_a_script_does_not_shadow_the_package(tmp_path):
    """With the src/ layout the repository root holds no ``ctpc`` package: a script run next
    to a clone called ``ctpc`` imports the installed package, not the clone as an empty
    namespace package."""
    clone = tmp_path / "ctpc"
    (clone / "src").mkdir(parents=True)
    (clone / "README.md").write_text("a clone\n")
    script = tmp_path / "script.py"
    script.write_text("import ctpc; print(ctpc.__file__); print(ctpc.open_results.__name__)\n")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.splitlines()[0]).resolve() == Path(ctpc.__file__).resolve()


def test_the_repository_root_holds_no_package():
    assert not (ROOT / "ctpc").exists()
    assert (ROOT / "src" / "ctpc" / "__init__.py").is_file()


def test_each_refusal_has_its_own_name_and_one_family():
    """A config error is a config error: output, results, build and download errors are not
    ConfigErrors, and all are InputErrors, which the commands turn into exit code 2."""
    from ctpc.cli.fetch import FetchError
    from ctpc.config.paths import OutputError
    from ctpc.results.dataset import ResultsError
    for cls in (OutputError, ResultsError, FetchError):
        assert not issubclass(cls, ctpc.ConfigError)
        assert issubclass(cls, ctpc.InputError)
    assert issubclass(ctpc.ConfigError, ctpc.InputError)
