"""A resolved config: the :class:`Config` of a run after :func:`ctpc.build.resolve.resolve`,
with what resolving it found, and which nothing can change.

:class:`Resolved` is a :class:`Config` (every attribute, ``to_dict``, ``to_yaml``, ``rates()``
as before) that is made only by :func:`ctpc.build.resolve.resolve`, once per run, and is then
immutable: its sections, lists and dicts refuse assignment (TypeError). What resolving it found
is :attr:`Resolved.found` (:class:`Found`): the data's sizes, the weights read from
``network.weights``, the lambda_max behind ``state_lr: auto``, the batch it was computed on and
the digests of the files it read, so that nothing after it reads a file or resolves it again.
A changed config (``model_copy(update=...)``, :meth:`Resolved.unresolved`) is a plain
:class:`Config` again, to be resolved anew.

It pickles as it is (a sweep cell travels to its worker this way, without being parsed from a
dict or resolved again). This module holds only the types; resolving is
:mod:`ctpc.build.resolve`.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr

from ctpc.config.schema import Config

CHANGE_HINT = ("a resolved config cannot be changed (it was checked as it is); change a copy, "
               "e.g. ctpc.load_config(cfg, ['key.path=value']), or cfg.unresolved() and resolve "
               "it again")


@dataclass(frozen=True, eq=False)
class Found:
    """What resolving one config found (read-only)."""
    n_examples: int | None = None      # of the batch's split (data.split) after its subset
    split_sizes: tuple[int, int] | None = None   # (train, test) of a training run (0: none)
    # network.weights as read, unscaled [out, in] float64 (read-only); None: from the seed
    weights: tuple[np.ndarray, ...] | None = None
    lambda_max: float | None = None    # behind dynamics.state_lr / tau_h: auto
    # the batch (x, y) lambda_max was computed on, kept for the simulation it is the batch of
    batch: tuple[np.ndarray, np.ndarray] | None = None
    # SHA-256 of input files read while resolving, as ctpc.config.identity's digest cache
    digests: dict = field(default_factory=dict)
    config_file: Path | None = None    # the YAML the config was read from, if any


def _refuse(*_args, **_kwargs):
    raise TypeError(CHANGE_HINT)


class FrozenList(list):
    """A list of a resolved config: reads like a list, refuses every change."""
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce__(self):
        return FrozenList, (list(self),)


class FrozenDict(dict):
    """A dict of a resolved config (``sweep:``): reads like a dict, refuses every change."""
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse

    def __reduce__(self):
        return FrozenDict, (dict(self),)


def _freeze_value(value):
    if isinstance(value, BaseModel):
        return _freeze_model(value)
    if isinstance(value, (list, tuple)) and not isinstance(value, FrozenList):
        return FrozenList(_freeze_value(v) for v in value) if isinstance(value, list) else \
            tuple(_freeze_value(v) for v in value)
    if isinstance(value, dict) and not isinstance(value, FrozenDict):
        return FrozenDict((k, _freeze_value(v)) for k, v in value.items())
    return value


def _thaw_value(value):
    if isinstance(value, BaseModel):
        return _thaw_model(value)
    if isinstance(value, list):
        return [_thaw_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_thaw_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _thaw_value(v) for k, v in value.items()}
    return value


class _Frozen:
    """Mixed into the frozen variants of the config's models: no assignment."""
    __setattr__ = __delattr__ = _refuse

    def __init__(self, *_args, **_kwargs):
        raise TypeError(f"{type(self).__name__} is made by ctpc.build.resolve.resolve (or "
                        "ctpc.load_config), not constructed")

    def __eq__(self, other):
        """Equal to a model of the same kind (frozen or not) with the same values."""
        if not isinstance(other, BaseModel):
            return NotImplemented
        kind = lambda m: _THAWED.get(type(m), type(m))
        return kind(self) is kind(other) and self.model_dump() == other.model_dump()

    __hash__ = None


_FROZEN: dict[type, type] = {}       # a config model class -> its frozen variant
_THAWED: dict[type, type] = {}       # and back


def _frozen_class(cls: type) -> type:
    if cls in _THAWED:
        return cls
    if cls not in _FROZEN:
        name = f"Resolved{cls.__name__}"
        frozen = type(cls)(name, (_Frozen, cls), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"{cls.__name__} of a resolved config (immutable).",
            "model_config": ConfigDict(frozen=True)})
        globals()[name] = frozen          # module-level, so that it pickles by name
        _FROZEN[cls], _THAWED[frozen] = frozen, cls
    return _FROZEN[cls]


def _model_values(model: BaseModel, convert) -> dict:
    return {k: convert(v) for k, v in model.__dict__.items()}


def _freeze_model(model: BaseModel) -> BaseModel:
    cls = _frozen_class(type(model))
    if type(model) is cls:
        return model
    return cls.model_construct(_fields_set=set(model.model_fields_set),
                               **_model_values(model, _freeze_value))


def _thaw_model(model: BaseModel) -> BaseModel:
    cls = _THAWED.get(type(model), type(model))
    return cls.model_construct(_fields_set=set(model.model_fields_set),
                               **_model_values(model, _thaw_value))


def _sections(cls: type, found: list | None = None) -> list[type]:
    """The model classes of ``cls``'s fields, at every depth (the config's sections and their
    own sections, e.g. dynamics.noise): each needs its frozen variant defined at import, so
    that a process that unpickles a resolved config before resolving one finds it."""
    found = [] if found is None else found
    for f in cls.model_fields.values():
        for t in (f.annotation, *typing.get_args(f.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel) and t not in found:
                found.append(t)
                _sections(t, found)
    return found


class Resolved(_Frozen, Config):
    """A :class:`Config` resolved once (:func:`ctpc.build.resolve.resolve`): every size and
    ``auto`` value filled, every check made, immutable. :attr:`found`: what resolving found."""
    model_config = ConfigDict(frozen=True)
    _found: Found = PrivateAttr(default_factory=Found)
    _yaml: str | None = PrivateAttr(default=None)

    @classmethod
    def model_validate(cls, *_args, **_kwargs):
        raise TypeError("a Resolved config comes from ctpc.build.resolve.resolve (or "
                        "ctpc.load_config); validate a Config and resolve it")

    model_validate_json = model_validate_strings = model_validate

    @property
    def found(self) -> Found:
        return self._found

    def to_yaml(self) -> str:
        """:meth:`Config.to_yaml`, written once: a resolved config never changes, and every
        output file of its run stores this text (~1 ms of YAML each time otherwise)."""
        if self._yaml is None:
            self.__pydantic_private__["_yaml"] = super().to_yaml()
        return self._yaml

    @property
    def config_file(self) -> Path | None:
        """The YAML file the config was read from (an input no output may replace), if any."""
        return self._found.config_file

    @property
    def trace_checked(self) -> bool:
        """Whether resolving checked the trace size (a simulation config: not a training one,
        whose simulation checks it when it plans its recording)."""
        return self.training is None

    def unresolved(self) -> Config:
        """A plain, mutable :class:`Config` of the same values (to change and resolve again)."""
        return _thaw_model(self)

    def model_copy(self, *, update=None, deep: bool = False):
        """A copy; with ``update`` a plain :class:`Config` (a changed config is unresolved:
        resolve it again before running it)."""
        if update:
            return self.unresolved().model_copy(update=update, deep=deep)
        return super().model_copy(deep=deep)


_FROZEN[Config], _THAWED[Resolved] = Resolved, Config
for _section in _sections(Config):
    _frozen_class(_section)


def freeze(cfg: Config, found: Found) -> Resolved:
    """The resolved, immutable copy of ``cfg`` (for :func:`ctpc.build.resolve.resolve` only)."""
    if isinstance(cfg, Resolved):
        raise TypeError("this config is resolved already")
    out = Resolved.model_construct(_fields_set=set(cfg.model_fields_set),
                                   **_model_values(cfg, _freeze_value))
    out.__pydantic_private__["_found"] = found
    return out


def require_resolved(cfg, where: str) -> "Resolved":
    """``cfg`` if it is resolved, else a TypeError that says how to resolve it."""
    if not isinstance(cfg, Resolved):
        raise TypeError(f"{where} needs a resolved config (ctpc.load_config(...), or "
                        f"ctpc.build.resolve.resolve(cfg)); got {type(cfg).__name__}")
    return cfg


__all__ = ["Found", "Resolved", "freeze", "require_resolved", "FrozenList", "FrozenDict"]
