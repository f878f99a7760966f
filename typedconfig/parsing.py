"""Build typed config dataclasses from plain dicts (YAML files, command-line overrides), checking every key and type.

Errors are one line and name the dotted key, what was expected and, where the set is finite, the allowed values.
YAML read with `load_yaml` gives a `str` field the text as written: YAML 1.1 reads the unquoted `no`, `on`, `0755`
and `2026-12-05` as false, true, 493 and a date, which only a bool, number or date field should receive. Number
fields read the text as Python does (`010` is 10, `1:30` is refused), not by YAML 1.1's octal and base-60 forms.
A mapping that names a key twice is refused: YAML would keep the last one silently.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import types
import typing
from typing import Any, Literal, Union

import yaml


YAML_SPECIAL_FLOATS = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the fix."""


class YamlScalar(str):
    """A value whose text a `str` field takes as written, and whose YAML reading (in `value`) other types take: an
    unquoted scalar of a YAML file that YAML 1.1 reads as a bool, number or date, or a command-line value
    (`load_value`)."""

    value: Any


class _TextKeepingLoader(yaml.SafeLoader):
    """yaml.SafeLoader, but bools, numbers and dates written unquoted come as YamlScalar, and a mapping that names a
    key twice is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):  # a list or mapping as a key (`? [a, b]`, `{[a]: 1}`)
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"a key must be a plain value, got a {type(key).__name__}", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {str(key)!r} twice (lines {seen[key].start_mark.line + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


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
                         ("float", yaml.SafeLoader.construct_yaml_float),
                         ("timestamp", yaml.SafeLoader.construct_yaml_timestamp)):
    _TextKeepingLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _keep_text(_construct))


def load_yaml(text: str) -> Any:
    """`text` parsed as yaml.safe_load does, except that unquoted bools, numbers and dates are YamlScalar, so `coerce`
    can give a str field their text, and that a key given twice in a mapping is an error; raises yaml.YAMLError."""
    return yaml.load(text, Loader=_TextKeepingLoader)


def load_value(text: str) -> Any:
    """A value given on the command line (`key=text`): a mapping written in YAML's braces (`{crossover: 512}`) as
    YAML reads it; anything else as a YamlScalar of the text exactly as given (leading spaces, `#` and `:`
    included), or of the string inside YAML quotes (`'"a b"'`), with YAML's reading in `value` for the fields that
    are not strings."""
    try:
        reading = load_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        reading = text
    if isinstance(reading, dict) and text.strip().startswith("{"):  # not `ROMEO:`, which YAML reads as a mapping
        return reading
    quoted = text.strip()[:1] in ("'", '"') and isinstance(reading, str)
    scalar = YamlScalar(reading if quoted else text)
    scalar.value = reading.value if isinstance(reading, YamlScalar) else reading
    return scalar


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
    if isinstance(value, YamlScalar) and tp not in (str, int, float) and origin not in (Union, types.UnionType,
                                                                                        Literal):
        value = value.value  # where a bool, mapping, list or any value is expected, YAML's reading of the text
    if tp is Any:  # checked later by whoever declares the real type (e.g. a backend's option fields)
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, {} if value is None else value, f"{key}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if type(None) in args and (isinstance(value, YamlScalar) and value.value is None  # null, ~ on the command line
                                   or isinstance(value, str) and value.lower() in ("null", "none")):
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
        if isinstance(value, str):  # the text, YamlScalar's too: YAML 1.1 reads 010 as 8 and 1:30 as 90
            value = _number(tp, str(value), key)
        if tp is int and isinstance(value, float):
            if not value.is_integer():  # inf and nan included
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
            value = int(value)
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        try:
            return tp(value)
        except OverflowError:  # an int past float's range
            digits = len(str(abs(value)))
            raise ConfigError(f"{key}: an integer of {digits} digits is out of the range of a float") from None
    if tp is str:
        if value is None:  # YAML's `key:` or `key: ~`, which str() would make the word 'None'
            raise ConfigError(f"{key}: expected a string, got nothing (null); give a value or leave the key out")
        if isinstance(value, (dict, list, bytes)):  # bytes: YAML's !!binary, which str() would write as b'...'
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported config type {tp}")


EXACT_INT_DIGITS = 19  # ints written as decimals (5.0, 1e6) are read below 10**19, past any int setting


def _number(tp: type, text: str, key: str) -> int | float:
    """`text` as Python reads a number: decimal (`010` is 10, `1_000` and `3e-4` are numbers), or an int written
    0x, 0o or 0b as YAML 1.2 writes it."""
    spelled = text.strip().lower()
    if spelled in YAML_SPECIAL_FLOATS:  # named as what they are by the range checks that follow: inf, nan
        return YAML_SPECIAL_FLOATS[spelled]
    # an int written as a decimal (1e6, 5.0) is read exactly: through a float it would round past 2**53 (a seed)
    as_decimal = tp is not float and any(c in text for c in ".eE") and not spelled.lstrip("+-").startswith("0x")
    try:
        if as_decimal:
            exact = decimal.Decimal(text)
        elif tp is float:
            return float(text)
        else:
            try:
                return int(text)
            except ValueError:
                return int(text, 0)  # 0x10, 0o755, 0b101
    except (ValueError, decimal.InvalidOperation):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {text!r}") from None
    # past any int setting, and its int could take gigabytes (1e999999999); 0e99 is 0
    if exact and exact.adjusted() >= EXACT_INT_DIGITS:
        raise ConfigError(f"{key}: expected an integer below 10**{EXACT_INT_DIGITS}, got {text.strip()}")
    if exact != exact.to_integral_value():
        raise ConfigError(f"{key}: expected an integer, got {text.strip()}")
    return int(exact)


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
