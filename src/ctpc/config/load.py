"""Reading a configuration: YAML or dict, ``--set`` overrides and schema validation
(:mod:`ctpc.config.schema`), with no file other than the YAML touched and no torch imported.
Resolution against the data, the weights and the machine (:func:`ctpc.build.resolve.resolve`)
comes after, one layer up; :func:`ctpc.build.resolve.load_config` does both.
"""
from __future__ import annotations

import copy
import os
import difflib
import typing
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from ctpc.config.schema import Config, ConfigError


# Hints for required keys that are missing (pydantic says only "Field required").
MISSING_HINTS = {
    "integrator": "the run length is missing: add integrator: {steps: N} (or t_end in ms; for "
                  "scheme discrete, budget)",
}


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _model_at(loc) -> type[BaseModel] | None:
    """The schema model at a key path (a tuple of keys), or None if it is not a section."""
    model = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        args = typing.get_args(field.annotation) or (field.annotation,)
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def _schema_keys(model=None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema."""
    out = []
    for name in (model or Config).model_fields:
        sub = _model_at((*prefix.split(".")[:-1], name) if prefix else (name,))
        out += _schema_keys(sub, f"{prefix}{name}.") if sub is not None else [prefix + name]
    return out


def _suggestion(loc) -> str | None:
    """'did you mean' for an unknown key: a close spelling among its section's keys, else
    the same key name in another section."""
    *parent, name = [str(p) for p in loc]
    model = _model_at(tuple(parent))
    if model is not None:
        close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
        if close:
            return ".".join([*parent, close[0]])
    elsewhere = [k for k in _schema_keys() if k.rsplit(".", 1)[-1] == name]
    return elsewhere[0] if elsewhere else None


def _override_of(loc: tuple, texts: dict[str, str], base: dict | None) -> tuple[str | None, bool]:
    """(the --set text of the override that set the key path ``loc`` or a key inside it,
    whether that override alone set it: ``loc`` is the override's key or inside it, or a
    section the config ``base`` had not before the overrides)."""
    path = ".".join(str(p) for p in loc)
    if not path:
        return None, False
    for dotted, text in texts.items():
        if path == dotted or path.startswith(dotted + "."):
            return text, True
    for dotted, text in texts.items():
        if dotted.startswith(path + "."):       # a section: the file's too, unless it is new
            node = base
            for part in loc:
                node = node.get(str(part)) if isinstance(node, dict) else None
            return text, node is None
    return None, False


def _format_validation_error(err: ValidationError, where: str,
                             override_texts: dict[str, str] | None = None,
                             base: dict | None = None) -> str:
    lines, from_set = [], 0
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            near = _suggestion(e["loc"])
            msg = (f"unknown key (did you mean {near}? see the config reference, docs/reference/config.md)"
                   if near else
                   "unknown key (check the spelling; see the config reference, docs/reference/config.md)")
        elif path in MISSING_HINTS and (e["type"] == "missing" or got is None):
            msg = MISSING_HINTS[path]
        elif e["type"] == "int_parsing" and isinstance(got, str) and _looks_like_float(got):
            msg += (f" (YAML reads {got} without a decimal point as text; write the integer "
                    "out in full, e.g. 1000000)")
        got_txt = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) \
            else f" (got {_short(got)})"
        text, alone = _override_of(e["loc"], override_texts or {}, base)
        if text is not None:
            from_set += alone
            got_txt += f" [--set {_clip(text, 80)}]"
        lines.append(f"  - {path}: {msg}{got_txt}")
    if from_set == len(lines):
        where = " (from --set)"
    return "\n".join([f"invalid configuration{where}:", *lines])


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML (numbers, lists, null, .inf...)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set integrator.dt=0.5")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key path; expected e.g. network.width=64")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader)
    except DocumentTooLarge as exc:
        raise ConfigError(f"--set {key}: the value {_short(raw)}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {_short(raw)} as YAML ({exc})") \
            from None
    return key.split("."), value


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value for a one-line message, cut to about ``limit`` characters."""
    try:
        text = repr(value)
    except ValueError:       # an int beyond Python's digit limit for str() (4300 digits)
        return f"a {type(value).__name__} too long to print"
    return _clip(text, limit)


def _clip(text: str, limit: int = 60) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text):,} characters)"


def override_items(overrides) -> list[tuple[str, Any, str | None]]:
    """``(dotted key, value, text)`` of each override: ``text`` is the ``KEY=VALUE`` string a
    ``--set`` (or a list of strings) gave, None for a ``{key.path: value}`` dict. One string is
    one override. Anything else is a ConfigError that says what is accepted."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        items = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                raise ConfigError(f"override {key!r}: keys of an overrides dict are dotted "
                                  "key paths such as 'network.width'")
            check_structure(value, f"override {key}")
            items.append((key, value, None))
        return items
    if isinstance(overrides, str):
        overrides = [overrides]
    if not isinstance(overrides, (list, tuple)):
        raise ConfigError(f"overrides must be a list of 'key.path=value' strings (or one such "
                          f"string) or a {{'key.path': value}} dict, not "
                          f"{type(overrides).__name__} {_short(overrides)}")
    items = []
    for text in overrides:
        if not isinstance(text, str):
            raise ConfigError(f"override {_short(text)}: expected a 'key.path=value' string, "
                              f"e.g. 'integrator.steps=100' (or pass a dict)")
        keys, value = parse_override(text)
        items.append((".".join(keys), value, text))
    return items


def apply_overrides(raw: dict, overrides: list[str] | str | dict[str, Any] | None) -> dict:
    """Return a copy of a raw config dict with ``key.path=value`` overrides applied."""
    return _apply(raw, override_items(overrides))


def _apply(raw: dict, items) -> dict:
    check_structure(raw, "config")
    raw = copy.deepcopy(raw)
    for dotted, value, _ in items:
        keys = dotted.split(".")
        node = raw
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i + 1])} is a value, "
                                  "not a section")
            node = child
        node[keys[-1]] = value
    return raw


# Bounds on what a config document (a file, a --set value, a dict given to load_config) may
# hold. A YAML alias (*name) repeats what its anchor (&name) names without copying it, so six
# nested aliases of ten items each make a million values out of a few hundred bytes (the
# "billion laughs"); every consumer (validation, the config stored in each output file) would
# expand them. No config key needs more than a few levels of nesting or anywhere near this
# many values: a sweep of 1000 seeds is about 1000 values.
MAX_NODES = 100_000      # values, lists and mappings, every alias expanded
MAX_DEPTH = 50           # lists / mappings inside each other


class DocumentTooLarge(yaml.YAMLError):
    """A document beyond :data:`MAX_NODES` or :data:`MAX_DEPTH`, or one that contains itself;
    ``str()`` says which, for a message that starts with the file or ``--set`` key."""


def _too_large(distinct: int) -> DocumentTooLarge:
    if distinct <= MAX_NODES:
        return DocumentTooLarge(
            f"its aliases (*name) expand to more than {MAX_NODES:,} values (nested aliases "
            "multiply: the 'billion laughs' pattern); ctpc refuses documents that large. Write "
            "the values out, or use fewer aliases")
    return DocumentTooLarge(f"it holds more than {MAX_NODES:,} values; no config needs that "
                            "many")


def _too_deep() -> DocumentTooLarge:
    return DocumentTooLarge(f"lists or mappings are nested more than {MAX_DEPTH} levels deep; "
                            "no config key takes values nested that deep")


def check_document_size(root, children) -> None:
    """Raise :class:`DocumentTooLarge` if the tree under ``root``, with every shared child
    (an alias) counted each time it is used, has more than MAX_NODES nodes, nests deeper than
    MAX_DEPTH, or contains itself. ``children(node)`` lists a node's children. Iterative and
    linear in the distinct nodes (shared ones are sized once), so neither a deep nor an
    exploding document costs more than reading it."""
    size, depth, on_path = {}, {}, set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            kids = children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise _too_large(len(size))
            if depth[key] > MAX_DEPTH:
                raise _too_deep()
            continue
        if key in size:
            continue
        if key in on_path:
            raise DocumentTooLarge("it contains itself (a list or mapping inside itself, as a "
                                   "YAML alias inside what its anchor names does); write the "
                                   "values out")
        if len(on_path) >= MAX_DEPTH:
            raise _too_deep()
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in children(node) if id(k) not in size)


def _yaml_children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _python_children(obj) -> list:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    return []


def check_structure(obj, where: str) -> None:
    """:func:`check_document_size` for a Python value (a dict config, an override value)."""
    try:
        check_document_size(obj, _python_children)
    except DocumentTooLarge as exc:
        raise ConfigError(f"{where}: {exc}") from None


MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader with three changes.

    * Two equal keys in one mapping are refused: ``yaml.safe_load`` keeps the last and drops
      the first without a word (a second ``integrator:`` section would replace the first).
    * The merge key ``<<: *anchor`` (YAML 1.1) works: the keys of the mapping it names come
      first, the mapping's own keys override them. (The duplicate check used to run before
      PyYAML's merge step and failed on the ``<<`` key, which has no constructor of its own.)
    * Documents are bounded (:data:`MAX_NODES` values with aliases expanded, :data:`MAX_DEPTH`
      levels): :class:`DocumentTooLarge` before anything is built from them.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._nesting = 0
        self._checked_mappings: set[int] = set()

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:   # Python refuses str -> int beyond 4300 digits
            raise yaml.constructor.ConstructorError(
                None, None, f"the integer {_clip(node.value, 40)} has too many digits to be a "
                "number ctpc takes (at most 19)", node.start_mark) from None

    def compose_node(self, parent, index):
        # the composer recurses per level: bound it before Python's recursion limit is hit
        self._nesting += 1
        try:
            if self._nesting > MAX_DEPTH:
                raise _too_deep()
            return super().compose_node(parent, index)
        finally:
            self._nesting -= 1

    def construct_document(self, node):
        check_document_size(node, _yaml_children)
        return super().construct_document(node)

    def flatten_mapping(self, node):
        # Runs once per mapping before its merge keys are resolved (also for the mappings
        # merged into another), so the check sees the keys as written.
        if id(node) not in self._checked_mappings:
            self._checked_mappings.add(id(node))
            self._refuse_duplicates(node)
        super().flatten_mapping(node)

    def _refuse_duplicates(self, node) -> None:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            try:
                duplicate = key in seen
            except TypeError:      # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice; keep one", key_node.start_mark)
            seen.add(key)


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_yaml_int)


def read_yaml(path: str | Path) -> dict:
    """A config file as a dict; every way of failing to read it is a ConfigError naming it."""
    if str(path).strip() == "":
        raise ConfigError("config file: empty path; give a YAML file such as "
                          "models/pcalm_deep.yaml")
    path = Path(os.path.expanduser(str(path)))        # ~ as the shell (and every path) has it
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory; give a YAML file, e.g. "
                          f"one of the models in it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not a UTF-8 text file (a binary or "
                          "another encoding); give a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror}); check "
                          "its permissions") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except DocumentTooLarge as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if raw is None:
        raise ConfigError(f"config file {str(path)!r} is empty; a config needs at least the run "
                          "length, e.g. integrator: {steps: 100}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got "
                          f"{type(raw).__name__}")
    return raw


def validate(raw: dict, where: str = "", override_texts: dict[str, str] | None = None,
             base: dict | None = None) -> Config:
    """Schema validation only (no files touched). ``override_texts`` ({dotted key: the --set
    text}) names the override behind an invalid key instead of the file (``base``: the config
    before the overrides)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where, override_texts, base)) from None


def read_config(source: Union[str, Path, dict, Config], overrides=None) -> Config:
    """Read, override and validate a configuration, without resolving it.

    ``source`` is a YAML path, a dict or a Config; ``overrides`` is a list of ``"a.b=value"``
    strings or a ``{"a.b": value}`` dict. Relative paths in the file (data.path,
    network.weights) are taken relative to the current directory, as on the command line.
    Raises :class:`ConfigError` with the offending key path.
    """
    where = ""
    if isinstance(source, Config):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = source
    else:
        raw = read_yaml(source)
        where = f" in {source}"
        raw.setdefault("name", Path(source).stem)
    items = override_items(overrides)
    texts = {dotted: text for dotted, _, text in items if text is not None}
    return validate(_apply(raw, items), where, texts, raw)
