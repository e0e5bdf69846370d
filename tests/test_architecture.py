"""The package's import layers (pyproject.toml, [tool.importlinter]) hold: nothing imports upward,
and reading results or analysing them never imports torch or Brian2. Checked by import-linter
on the source tree, not by a hand-written import parser."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept(tmp_path):
    # A subprocess so the check sees this checkout's ctpc (first on the path), and a fresh cache
    # directory so a stale cache from another checkout cannot answer.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, "
         f"cache_dir={str(tmp_path)!r}, no_logo=True))"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_reading_results_does_not_import_torch(tmp_path):
    """open_results and the analysis work in an interpreter that never loads torch."""
    code = ("import sys, ctpc.results.dataset, ctpc.analysis, ctpc.analysis.plotting; "
            "bad = [m for m in ('torch', 'brian2') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
