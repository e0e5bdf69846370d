"""mkdocs hooks: the parts of the site that are generated from the code at build time.

* ``<!-- ctpc:config-reference -->`` in a page becomes the config reference: one table per
  section of :class:`ctpc.config.schema.Config` with every key's type, default, allowed values
  or bounds and description, read from the pydantic models (nothing is copied by hand).
* ``<!-- ctpc:schemes -->`` becomes the table of :data:`ctpc.common.schemes.SCHEMES`.
* The notebooks ``analysis/*.ipynb`` are added to the build as ``analysis/NAME.ipynb``
  (rendered by mkdocs-jupyter, not executed), so they are not duplicated under docs/.
* Sphinx roles left in docstrings (``:func:`x```) are shown as plain code in the API pages.

Only ``ctpc.common``, ``ctpc.config`` and ``ctpc.data`` (for its normalisation constants) are
imported: pydantic, PyYAML, numpy and xarray; no torch.
"""
from __future__ import annotations

import math
import re
import sys
import types
import typing
from pathlib import Path

import yaml
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pydantic import BaseModel  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

NOTEBOOKS = ROOT / "analysis"
CONFIG_MARKER = "<!-- ctpc:config-reference -->"
SCHEMES_MARKER = "<!-- ctpc:schemes -->"


# ----------------------------------------------------------------------------- notebooks
@event_priority(100)       # before mkdocs-jupyter's on_files, which wraps every .ipynb
def on_files(files, config):
    # A File whose source folder is the repository root: its page is analysis/NAME/ and its
    # path the notebook itself (mkdocs-jupyter's wrapper reads the source through src_dir).
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        files.append(File(f"{NOTEBOOKS.name}/{nb.name}", src_dir=str(ROOT),
                          dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls,
                          inclusion=InclusionLevel.INCLUDED))
    return files


# ----------------------------------------------------------------------------- markers
def on_page_markdown(markdown, page, config, files):
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    if SCHEMES_MARKER in markdown:
        markdown = markdown.replace(SCHEMES_MARKER, scheme_table())
    return markdown


_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|const):(?=<code>)")


def on_page_content(html, page, config, files):
    # A Sphinx role before a code span (``:func:`name```) renders as ":func:<code>name</code>".
    return _ROLE.sub("", html)


# ----------------------------------------------------------------------------- config
def yaml_value(value) -> str:
    """A value as it is written in a config file (the form the reference shows defaults in)."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def section_models(model=None, prefix: str = ""):
    """(dotted prefix, model, field name, FieldInfo) of every key: sections are recursed into."""
    from ctpc.config.schema import Config
    model = model or Config
    for name, info in model.model_fields.items():
        sub = _model_of(info.annotation)
        if sub is not None:
            yield from section_models(sub, f"{prefix}{name}.")
        else:
            yield prefix, model, name, info


def _model_of(annotation):
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def default_of(info) -> str:
    if info.default_factory is not None:
        return yaml_value(info.default_factory())
    if info.default is PydanticUndefined:
        return "required"
    return yaml_value(info.default)


_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", Path: "path",
               type(None): "null", typing.Any: "any value"}


def _flatten(annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _flatten(arg)
    elif origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        yield base, [m for item in meta for m in getattr(item, "metadata", [item])]
    else:
        yield annotation, []


def type_and_allowed(info) -> tuple[str, str]:
    """(the key's type, its allowed values and bounds), both from the annotation and the
    field's constraints."""
    types_, allowed = [], []
    bounds = list(info.metadata)
    for arg, meta in _flatten(info.annotation):
        bounds += meta
        origin = typing.get_origin(arg)
        if origin is typing.Literal:
            values = [yaml_value(v) for v in typing.get_args(arg)]
            allowed += [f"`{v}`" for v in values]
            types_.append("string" if all(isinstance(v, str) for v in typing.get_args(arg))
                          else "literal")
        elif origin is list:
            (item,) = typing.get_args(arg)
            if typing.get_origin(item) is typing.Literal:
                types_.append("list of: " + ", ".join(f"`{v}`" for v in typing.get_args(item)))
            else:
                types_.append(f"list of {_TYPE_NAMES.get(item, getattr(item, '__name__', item))}s")
        elif origin is dict:
            key, val = typing.get_args(arg)
            types_.append(f"mapping of {_TYPE_NAMES[key]} to list")
        elif arg is bool:
            types_.append("boolean")
            allowed += ["`false`", "`true`"]
        else:
            types_.append(_TYPE_NAMES.get(arg, getattr(arg, "__name__", str(arg))))
    marks = {"Ge": "≥", "Gt": ">", "Le": "≤", "Lt": "<"}
    for b in bounds:
        kind = type(b).__name__
        if kind in marks:
            value = getattr(b, kind.lower())
            text = "2⁶³ − 1" if value == 2 ** 63 - 1 else yaml_value(value)
            allowed.append(f"{marks[kind]} {text}")
        elif kind == "AllowInfNan" and b.allow_inf_nan:
            allowed.append("`.inf` allowed")
    seen = []
    for t in types_:
        if t not in seen:
            seen.append(t)
    return " or ".join(seen), ", ".join(allowed)


def _cell(text: str) -> str:
    """Markdown (code spans included) for a table cell: one line."""
    return " ".join((text or "").split()).replace("|", "\\|")


def _text(text: str) -> str:
    """Plain text for a Markdown table cell: one line, no HTML, no emphasis markers."""
    text = " ".join((text or "").split())
    for char, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"),
                          ("*", "\\*"), ("_", "\\_")):
        text = text.replace(char, escaped)
    return text


def config_reference() -> str:
    from ctpc.config.schema import Config
    sections: dict[str | None, list[str]] = {}
    for prefix, model, name, info in section_models():
        key = prefix + name
        typ, allowed = type_and_allowed(info)
        default = default_of(info)
        shown = "**required**" if default == "required" else f"`{_cell(default)}`"
        sections.setdefault(prefix.rstrip(".") or None, []).append(
            f"| `{key}`{{#{key.replace('.', '-')}}} | {_cell(typ)} | {shown} | "
            f"{_cell(allowed)} | {_text(info.description)} |")
    out = []
    for section, rows in sections.items():
        out += [_section_heading(section, Config),
                "| key | type | default | allowed | description |", "|---|---|---|---|---|",
                *rows]
        if section in SECTION_NOTES:
            out += ["", SECTION_NOTES[section]()]
    return "\n".join(out) + "\n"


def _section_heading(section: str | None, config_model) -> str:
    if section is None:
        return "\n## Top level {#top-level}\n\nKeys at the top of the file.\n"
    info = config_model.model_fields[section.split(".")[0]]
    model = _model_of(info.annotation)
    doc = " ".join((info.description or model.__doc__ or "").strip().split("\n\n")[0].split())
    doc = doc[0].upper() + doc[1:].rstrip(".") + "." if doc else ""
    if info.is_required():
        doc += " The section is required (it holds the run length)."
    elif info.default is None and info.default_factory is None:
        doc += " The section is optional (default `null`); the defaults below apply once it is given."
    return f"\n## `{section}` {{#{section}}}\n\n{doc}\n"


def _rate_defaults() -> str:
    """The time constants a config gets when it gives neither parameterisation (or one half of
    the paper's), read from :meth:`Config.rates` itself."""
    from ctpc.config.schema import Config

    def rates(**dyn):
        cfg = Config.model_validate({"integrator": {"steps": 1, "dt": 1.0}, "dynamics": dyn})
        return cfg.rates()
    tau_h, tau_l = rates()
    _, tau_l_paper = rates(state_lr=0.5)
    tau_h_paper, _ = rates(alpha=0.5)
    return (f"When none of `tau_h`, `tau_lambda`, `state_lr`, `alpha` is given, "
            f"τ_h = {tau_h:g} ms and τ_λ = {tau_l:g} ms. Given only `state_lr`, "
            f"`alpha` = {1 / tau_l_paper:g}; given only `alpha`, `state_lr` = "
            f"{1 / tau_h_paper:g} (with `dt` = 1; `Config.rates`). Giving both forms (a time "
            "constant and a step size) is an error. Method `pc` has no multipliers: τ_λ = ∞ "
            "(`tau_lambda`, `alpha` are ignored).")


def _normalisation_defaults() -> str:
    """What ``data.mean``/``data.std`` null means, from :mod:`ctpc.data`'s constants."""
    from ctpc.data import MNIST_MEAN, MNIST_STD
    return (f"`data.mean`/`data.std` `null` mean the source's own normalisation, applied after "
            f"pixels are scaled to [0, 1]: `mnist` and `idx` use MNIST's {MNIST_MEAN:g} / "
            f"{MNIST_STD:g} (for Fashion-MNIST set 0.2860 / 0.3530), `digits` the whole set's "
            "pixel mean and std, `npz` none. Setting only one keeps the other's default.")


SECTION_NOTES = {"dynamics": _rate_defaults, "data": _normalisation_defaults}


# ----------------------------------------------------------------------------- schemes
def scheme_table() -> str:
    from ctpc.common.schemes import SCHEMES
    rows = ["| scheme | family | order | stages | Brian2 method | what it is |",
            "|---|---|---|---|---|---|"]
    for s in SCHEMES.values():
        rows.append(f"| `{s.name}`{{#{s.name}}} | {s.family.replace('_', ' ')} | "
                    f"{'—' if s.order is None else s.order} | {s.stages} | "
                    f"{'—' if s.brian2_method is None else f'`{s.brian2_method}`'} | "
                    f"{_text(s.description)} |")
    return "\n".join(rows) + "\n"
