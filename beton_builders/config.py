"""Typed configs: dataclass defaults, YAML files that hold only overrides, `key=value` on the command line.

Every config in fastbd goes through `load_config`: OmegaConf merges the YAML and the dotlist onto the
structured dataclass, so a misspelt or unknown key is an error that names the key and the file, not a
silently ignored setting. It lives in the compiler so that the compiler can use it without importing
anything of training (fastbd/config.py re-exports it for the training side).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the field."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                defaults: Sequence[str] = ()) -> T:
    """Merge `defaults` (`a.b=value`, e.g. a command's own presets), then `path` (YAML, overrides only),
    then `overrides` onto `cls()`; strict."""
    base = OmegaConf.structured(cls)
    where = "defaults"
    try:
        if defaults:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(defaults)))
        if path is not None:
            where = str(path)
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            loaded = OmegaConf.load(path)
            if loaded is None:
                loaded = OmegaConf.create({})
            base = OmegaConf.merge(base, loaded)
        if overrides:
            where = "command-line overrides " + " ".join(overrides)
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} is not of the form key=value")
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        obj = OmegaConf.to_object(base)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid config{f' at {key!r}' if key else ''}: {msg}") from None
    return obj  # type: ignore[return-value]


def from_dict(cls: type[T], d: dict, where: str = "config") -> T:
    """The dataclass `cls` from a plain dict (e.g. one `to_dict` wrote to JSON); strict like load_config."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), d))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: invalid config: {str(e).splitlines()[0]}") from None


def to_dict(obj: Any) -> dict:
    """A plain, JSON/YAML-serialisable dict of a (nested) config dataclass."""
    return dataclasses.asdict(obj)


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(obj)))
