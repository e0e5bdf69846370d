"""The fast subset is what tests/conftest.py's SLOW leaves: every name there must be a test that
exists (a renamed test would otherwise drop into the fast subset unnoticed)."""
from pathlib import Path

from conftest import SLOW

HERE = Path(__file__).resolve().parent


def test_every_slow_entry_names_a_test():
    missing = []
    for entry in sorted(SLOW):
        file, name = entry.split("::")
        path = HERE / file
        if not path.exists() or f"def {name}(" not in path.read_text():
            missing.append(entry)
    assert not missing, missing
