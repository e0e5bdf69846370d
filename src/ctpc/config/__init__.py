"""The schema and everything about a run that is known from its config alone, without torch:
the validated :class:`Config` (:mod:`.schema`), reading YAML with overrides (:mod:`.load`), the
checked output paths (:mod:`.paths`) and a run's identity hash (:mod:`.identity`)."""
from ctpc.config.schema import Config, ConfigError

__all__ = ["Config", "ConfigError"]
