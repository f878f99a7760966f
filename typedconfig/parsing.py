"""Build typed config dataclasses from plain dicts (YAML files, command-line overrides), checking every key and type.

Errors are one line and name the dotted key, what was expected and, where the set is finite, the allowed values.
YAML read with `load_yaml` gives a `str` field the text as written: YAML 1.1 reads the unquoted `no`, `on` and `0755`
as false, true and 493, which only a bool or number field should receive.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the fix."""


class YamlScalar(str):
    """An unquoted YAML scalar that YAML 1.1 reads as a bool or a number: the text as written, and in `value` that
    reading."""

    value: bool | int | float


class _TextKeepingLoader(yaml.SafeLoader):
    """yaml.SafeLoader, but bools and numbers written unquoted come as YamlScalar."""


def _keep_text(construct: Any) -> Any:
    def constructor(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        value = construct(loader, node)
        if node.style is not None:  # quoted with an explicit tag (!!int "5"): no text to keep
            return value
        scalar = YamlScalar(node.value)
        scalar.value = value
        return scalar
    return constructor


for _tag, _construct in (("bool", yaml.SafeLoader.construct_yaml_bool), ("int", yaml.SafeLoader.construct_yaml_int),
                         ("float", yaml.SafeLoader.construct_yaml_float)):
    _TextKeepingLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _keep_text(_construct))


def load_yaml(text: str) -> Any:
    """`text` parsed as yaml.safe_load does, except that unquoted bools and numbers are YamlScalar, so `coerce` can
    give a str field their text; raises yaml.YAMLError."""
    return yaml.load(text, Loader=_TextKeepingLoader)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass `cls` with fields from `data` (missing ones keep their defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys to values, got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} (allowed in {prefix.rstrip('.') or 'config'}: {', '.join(fields)})"
        )
    values = {key: coerce(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` converted to type `tp` (accepting numeric strings such as '3e-4' for numbers), or a ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, YamlScalar) and tp is not str and origin not in (Union, types.UnionType, Literal):
        value = value.value  # where a bool or number is expected, YAML's reading of the text
    if tp is Any:  # checked later by whoever declares the real type (e.g. a backend's option fields)
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, {} if value is None else value, f"{key}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        given = value  # named as written in the message, not as YAML read it
        if isinstance(value, YamlScalar):
            value = str(value) if value in args else value.value
        if isinstance(value, bool) and value not in args:  # YAML 1.1 reads off/on/no/yes as booleans
            spellings = ("on", "yes", "true") if value else ("off", "no", "false")
            value = next((a for a in args if str(a).lower() in spellings), value)
        if value not in args:
            shown = repr(str(given)) if isinstance(given, YamlScalar) else repr(given)
            raise ConfigError(f"{key}: {shown} is not allowed (allowed: {', '.join(map(str, args))})")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {coerce(args[0], k, key): coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return origin(coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        if isinstance(value, str):
            try:
                value = float(value) if tp is float or any(c in value for c in ".eE") else int(value)
            except ValueError:
                raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
            value = int(value)
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return tp(value)
    if tp is str:
        if value is None:  # YAML's `key:` or `key: ~`, which str() would make the word 'None'
            raise ConfigError(f"{key}: expected a string, got nothing (null); give a value or leave the key out")
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported config type {tp}")


def coerce_fields(instance: Any, section: str) -> None:
    """Give every field of the dataclass `instance` its declared type, as from_dict does for YAML: what the Python
    API passes (64.0 for an int, 'false' for a bool) converts, or fails here naming `section.field`, rather than
    deep in whatever reads it. A field that already holds its declared dataclass is left as it is."""
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value, tp = getattr(instance, f.name), hints[f.name]
        if not (dataclasses.is_dataclass(tp) and isinstance(value, tp)):
            setattr(instance, f.name, coerce(tp, value, f"{section}.{f.name}" if section else f.name))


def to_dict(instance: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML / JSON / checkpoints)."""
    return dataclasses.asdict(instance)
