"""The documentation: the site builds with warnings as errors, its config reference is the schema,
and the README stays short and gives the commands CI runs."""
import os
import re
import subprocess
import sys
import typing
from html.parser import HTMLParser
from pathlib import Path

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ctpc.common.schemes import SCHEMES
from ctpc.config.schema import Config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 260


class _Rows(HTMLParser):
    """The text of every table cell, row by row."""

    def __init__(self):
        super().__init__()
        self.rows, self._row, self._cell = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _table_rows(html_file: Path) -> list[list[str]]:
    parser = _Rows()
    parser.feed(html_file.read_text(encoding="utf-8"))
    return parser.rows


def _section(annotation):
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _yaml(value) -> str:
    """A default as a config file writes it."""
    if isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def schema_defaults(model=Config, prefix="") -> dict[str, str]:
    """Every key of the schema (dotted) and its default, from the pydantic models."""
    out = {}
    for name, info in model.model_fields.items():
        sub = _section(info.annotation)
        if sub is not None:
            out.update(schema_defaults(sub, f"{prefix}{name}."))
        elif info.default_factory is not None:
            out[prefix + name] = _yaml(info.default_factory())
        elif info.default is PydanticUndefined:
            out[prefix + name] = "required"
        else:
            out[prefix + name] = _yaml(info.default)
    return out


def test_site_builds_with_warnings_as_errors_and_its_config_reference_is_the_schema(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr

    rows = {r[0]: r for r in _table_rows(site / "reference" / "config" / "index.html")
            if len(r) == 5 and r[0] != "key"}
    expected = schema_defaults()
    assert set(rows) == set(expected), (sorted(set(expected) - set(rows)),
                                        sorted(set(rows) - set(expected)))
    wrong = {k: (rows[k][2], v) for k, v in expected.items() if rows[k][2] != v}
    assert not wrong, wrong                     # key: (shown, the schema's default)
    undescribed = sorted(k for k, r in rows.items() if not r[4])
    assert not undescribed, f"keys without a description in the schema: {undescribed}"

    schemes = {r[0]: r for r in _table_rows(site / "reference" / "schemes" / "index.html")
               if r and r[0] != "scheme"}
    assert set(schemes) == set(SCHEMES)
    for name, info in SCHEMES.items():
        assert schemes[name][2] == ("—" if info.order is None else str(info.order))

    for notebook in sorted((ROOT / "analysis").glob("*.ipynb")):
        assert (site / "analysis" / notebook.stem / "index.html").is_file(), notebook.name
    for page in ("pcalm-spec", "benchmarks", "reliability", "reproduction"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("load_config", "simulate", "train", "open_results", "run_sweep", "Config",
                 "ConfigError", "ctpc.analysis", "ctpc.studies.stability"):
        assert f'id="{name}"' in api or f".{name}\"" in api, name


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"


def _ci_command() -> str:
    """The command .ci/run runs (its one line that is not a comment, set or cd)."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith(("#", "set ", "cd "))]
    assert len(commands) == 1, commands
    return commands[0]


def test_readme_commands_are_what_ci_runs():
    ci = _ci_command()
    install, _, tests = ci.rpartition(" && ")
    assert tests == "python -m pytest", ci
    readme = README.read_text(encoding="utf-8").splitlines()
    fresh = [ln for ln in readme if ln.startswith("python3.11 -m venv")]
    main_job = f"{install} && python -m ctpc.simulate models/pcalm_deep.yaml"
    assert fresh == [main_job, ci], fresh
    assert (ROOT / "models" / "pcalm_deep.yaml").is_file()
    # the install page of the docs gives the same two commands
    guide = (ROOT / "docs" / "guide" / "install.md").read_text(encoding="utf-8").splitlines()
    assert [ln for ln in guide if ln.startswith("python3.11 -m venv")] == [main_job, ci]


def test_every_link_of_the_readme_to_a_file_exists():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target
