"""Typed configs: dataclass defaults, YAML files that hold only overrides, `key=value` on the command line.

Every config in fastbd goes through `load_config`: OmegaConf merges the YAML and the dotlist onto the
structured dataclass, so a misspelt or unknown key is an error that names the key and the file, not a
silently ignored setting. It lives in the compiler so that the compiler can use it without importing
anything of training (fastbd/config.py re-exports it for the training side).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")


class UserError(Exception):
    """Something the user can fix (a config, a file, a folder, a run that diverged): the message is one line
    naming the file or field, and the command line prints it as `error: ...` and exits with code 2."""


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the file and the field."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                defaults: Sequence[str] = ()) -> T:
    """Merge `defaults` (`a.b=value`, e.g. a command's own presets), then `path` (YAML, overrides only),
    then `overrides` onto `cls()`; strict."""
    return _load(cls, path, overrides, defaults, OmegaConf.to_object)  # type: ignore[return-value]


def _load(cls: type, path, overrides: Sequence[str], defaults: Sequence[str], finish: Callable):
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
        return finish(base)
    except yaml.YAMLError as e:  # a syntax error (ParserError, ScannerError): where it is, on one line
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", None) or "a key"
        raise ConfigError(f"{key}: required; give it in the YAML or as {key}=...") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid config{f' at {key!r}' if key else ''}: {msg}") from None


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


# ----- listing every key ----------------------------------------------------------------------------------

def describe(cls: type, path: str | Path | None = None, overrides: Sequence[str] = (),
             defaults: Sequence[str] = ()) -> str:
    """The resolved config as YAML, every key with the comment its dataclass field carries (its unit and
    meaning), like Hydra's `--cfg job`: `fastbd config train`. A required value still missing shows as ???."""
    values = _load(cls, path, overrides, defaults,
                   lambda node: OmegaConf.to_container(node, resolve=False, throw_on_missing=False))
    return "\n".join(_describe(cls, values, 0)) + "\n"


def field_comments(cls: type) -> dict[str, str]:
    """{field: the comment after it in the class source} (a field's `metadata["help"]` wins)."""
    notes: dict[str, str] = {}
    for klass in cls.__mro__:  # a class made at run time (MethodConfig, TriggerSpec) has its bases' comments
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # made at run time: no source, metadata only
            continue
        first_name: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.start[0] not in first_name:
                first_name[tok.start[0]] = tok.string
            elif tok.type == tokenize.COMMENT and tok.start[0] in first_name:
                notes.setdefault(first_name[tok.start[0]], tok.string.lstrip("#").strip())
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            notes[f.name] = f.metadata["help"]
    return notes


def _describe(cls: type, values: dict, depth: int) -> list[str]:
    hints, notes, pad, out = typing.get_type_hints(cls), field_comments(cls), "  " * depth, []
    for f in dataclasses.fields(cls):
        v, note = values[f.name], notes.get(f.name)
        tail = f"  # {note}" if note else ""
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(v, dict):
            out += [f"{pad}{f.name}:{tail}", *_describe(hints[f.name], v, depth + 1)]
        else:
            out.append(f"{pad}{f.name}: {_flow(v)}{tail}")
    return out


def _flow(v: Any) -> str:
    if v == "???":
        return "???"
    text = yaml.safe_dump(v, default_flow_style=True, width=1 << 20).strip()
    return text[:-3].strip() if text.endswith("\n...") else text
