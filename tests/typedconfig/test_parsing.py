"""typedconfig.parsing builds config dataclasses from plain dicts (YAML files, command-line values given as text),
converting and checking every value; each error is one line naming the dotted key, what was expected and, where the
choice is finite, what is allowed."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest
import yaml

from typedconfig.parsing import ConfigError, YamlScalar, coerce, from_dict, load_value, load_yaml, to_dict


@dataclass
class Inner:
    width: int = 4
    scale: float = 1.0
    mode: Literal["fast", "exact"] = "fast"

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"inner.width must be >= 1, got {self.width}")


@dataclass
class Outer:
    name: str = "run"
    inner: Inner = field(default_factory=Inner)
    limit: Optional[int] = None
    tags: list[str] = field(default_factory=list)
    shape: tuple[int, ...] = (1, 1)
    options: dict[str, Any] = field(default_factory=dict)
    flag: bool = False
    logging: Literal["off", "on", "auto"] = "auto"


def check(tp, value, key="k"):
    return coerce(tp, value, key)


def fails(tp, value, key="k") -> str:
    with pytest.raises(ConfigError) as info:
        coerce(tp, value, key)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_keys_and_sections_keep_their_defaults():
    assert from_dict(Outer, {}) == Outer()
    assert from_dict(Outer, {"inner": {"scale": 2}}).inner == Inner(width=4, scale=2.0, mode="fast")
    assert from_dict(Outer, {"inner": None}).inner == Inner()  # an empty YAML section


def test_a_yaml_document_becomes_nested_typed_sections():
    text = """
name: demo
inner:
  width: 8
  scale: 3.0e-4
  mode: exact
limit: null
tags: [a, b]
shape: [2, 3]
options: {eps: 1.0e-6, depth: 2}
flag: yes
logging: off
"""
    cfg = from_dict(Outer, yaml.safe_load(text))
    assert cfg == Outer(name="demo", inner=Inner(8, 3e-4, "exact"), limit=None, tags=["a", "b"], shape=(2, 3),
                        options={"eps": 1e-6, "depth": 2}, flag=True, logging="off")
    assert isinstance(cfg.inner.scale, float) and isinstance(cfg.shape, tuple)


@pytest.mark.parametrize("raw, name", [
    ("no", "no"), ("on", "on"), ("0755", "0755"), ("1.50", "1.50"), ("'no'", "no"), ('"a b"', "a b"),
    (" The king", " The king"), ("ROMEO:", "ROMEO:"), ("a #b", "a #b"), ("#1", "#1"), ("[x]", "[x]"),
    ("2026-12-05T09:10:00Z", "2026-12-05T09:10:00Z"), ("null", "null"),
])
def test_a_str_field_from_a_command_line_value_gets_the_text_as_given(raw, name):
    """`key=no` on the command line is read with load_value: YAML alone would make it 'False' (0755: '493'), drop
    a leading space or a comment, read `ROMEO:` as a mapping and a timestamp as a date."""
    assert from_dict(Outer, {"name": load_value(raw)}).name == name


@pytest.mark.parametrize("raw, field_name, expected", [
    ("010", "limit", 10), ("1_000", "limit", 1000), ("1e3", "limit", 1000), ("0x10", "limit", 16),
    ("12345678901234567.0", "limit", 12345678901234567), ("1.5e17", "limit", 150000000000000000),  # exactly
    ("0e99", "limit", 0),
    ("null", "limit", None), ("off", "flag", False), ("[a, b]", "tags", ["a", "b"]), ("a,b", "tags", ["a", "b"]),
    ("{depth: 2}", "options", {"depth": 2}), ("{}", "options", {}), ("false", "logging", "off"),
])
def test_other_fields_from_a_command_line_value_get_their_reading(raw, field_name, expected):
    assert getattr(from_dict(Outer, {field_name: load_value(raw)}), field_name) == expected


@pytest.mark.parametrize("raw, message", [("1.5", "expected an integer, got 1.5"),
                                          ("12345678901234567.5", "expected an integer, got 12345678901234567.5"),
                                          ("1e-400", "expected an integer, got 1e-400"),
                                          ("1e999999999", "expected an integer below 10\\*\\*19, got 1e999999999")])
def test_an_int_written_as_a_decimal_must_be_a_whole_number_in_range(raw, message):
    with pytest.raises(ConfigError, match=f"^limit: {message}$"):
        from_dict(Outer, {"limit": load_value(raw)})


def test_a_command_line_mapping_is_one_only_in_braces():
    mapping = load_value("{a: 1, b: [2]}")  # its numbers are YamlScalar, as in a YAML file
    assert list(mapping) == ["a", "b"] and (mapping["a"].value, mapping["b"][0].value) == (1, 2)
    assert isinstance(load_value("a: 1"), YamlScalar) and list(load_value("a: 1").value) == ["a"]
    assert (load_value(""), load_value("[unclosed")) == ("", "[unclosed")


def test_a_key_given_twice_in_a_mapping_is_refused_with_both_lines():
    with pytest.raises(yaml.YAMLError, match=r"found the key 'model' twice \(lines 1 and 3\); keep one"):
        load_yaml("model: {n: 1}\ntrain: {}\nmodel: {m: 2}\n")
    with pytest.raises(yaml.YAMLError, match="found the key 'n' twice"):
        load_yaml("model:\n  n: 1\n  n: 2\n")


@pytest.mark.parametrize(("text", "kind"), [("? [a, b]\n: 1\n", "list"), ("? {a: 1}\n: 1\n", "dict"),
                                          ("{[a]: 1}", "list")])
def test_a_list_or_mapping_as_a_key_is_refused_by_name(text, kind):
    with pytest.raises(yaml.YAMLError, match=f"a key must be a plain value, got a {kind}"):
        load_yaml(text)


def test_a_yaml_file_gives_str_fields_their_text_and_typed_fields_yaml_reading():
    """Numbers as Python reads their text (0755 is 755, where YAML 1.1 would read 493), 0x as YAML 1.2 does."""
    text = """
name: no
inner:
  width: 0x10
  scale: 1.5
  mode: exact
limit: 0755
tags: [on, 1, '0755']
options: {on: 1.0e-6, quoted: 'yes', tagged: !!int "7"}
flag: on
logging: off
"""
    cfg = from_dict(Outer, load_yaml(text))
    assert cfg == Outer(name="no", inner=Inner(16, 1.5, "exact"), limit=755, tags=["on", "1", "0755"],
                        options={"on": 1e-6, "quoted": "yes", "tagged": 7}, flag=True, logging="off")
    assert type(cfg.name) is str and type(cfg.options["on"]) is float  # no YamlScalar is left in the config


def test_load_yaml_keeps_the_text_of_unquoted_bools_and_numbers_only():
    data = load_yaml("a: off\nb: 0755\nc: '0755'\nd: null\ne: text")
    assert isinstance(data["a"], YamlScalar) and (data["a"], data["a"].value) == ("off", False)
    assert isinstance(data["b"], YamlScalar) and (data["b"], data["b"].value) == ("0755", 493)
    assert [type(data[k]) for k in "cde"] == [str, type(None), str]
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: [unclosed")


def test_to_dict_gives_plain_nested_dicts_that_build_the_same_config():
    cfg = Outer(name="x", inner=Inner(2, 0.5, "exact"), limit=3, tags=["t"], options={"a": 1})
    plain = to_dict(cfg)
    assert plain["inner"] == {"width": 2, "scale": 0.5, "mode": "exact"}
    assert not any(dataclasses.is_dataclass(v) for v in plain.values())
    assert from_dict(Outer, plain) == cfg
    assert from_dict(Outer, yaml.safe_load(yaml.safe_dump(plain))) == cfg


@pytest.mark.parametrize("data, message", [
    ({"nmae": "x"}, "unknown key nmae (allowed in config: name, inner, limit, tags, shape, options, flag, logging)"),
    ({"inner": {"widht": 2}}, "unknown key inner.widht (allowed in inner: width, scale, mode)"),
])
def test_unknown_keys_are_named_with_the_allowed_ones(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert str(info.value) == message


@pytest.mark.parametrize("data, message", [
    ([1, 2], "config: expected a mapping of keys to values, got list"),
    ({"inner": 5}, "inner: expected a mapping of keys to values, got int"),
])
def test_a_section_that_is_not_a_mapping_is_named(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert str(info.value) == message


@pytest.mark.parametrize("data, message", [
    ({"inner": {"width": "wide"}}, "inner.width: expected int, got 'wide'"),
    ({"inner": {"mode": "slow"}}, "inner.mode: 'slow' is not allowed (allowed: fast, exact)"),
    ({"tags": 5}, "tags: expected a list, got 5"),
    ({"shape": [1, "x"]}, "shape[1]: expected int, got 'x'"),
    ({"flag": "maybe"}, "flag: expected true or false, got 'maybe'"),
    ({"limit": 2.5}, "limit: expected an integer, got 2.5"),
    ({"options": 7}, "options: expected a mapping, got 7"),
    ({"name": {"a": 1}}, "name: expected a string, got {'a': 1}"),
])
def test_type_errors_name_the_dotted_key_and_what_was_expected(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert str(info.value) == message


def test_a_dataclass_validation_error_becomes_a_config_error_with_its_message():
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"width": 0}})
    assert str(info.value) == "inner.width must be >= 1, got 0"
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("tp, value, expected", [
    (float, "3e-4", 3e-4),  # YAML 1.1 reads 3e-4 (no dot) as a string
    (float, 2, 2.0),
    (int, "12", 12),
    (int, "1e3", 1000),
    (int, 4.0, 4),
    (bool, "Yes", True),
    (bool, "0", False),
    (bool, False, False),
    (str, 5, "5"),
])
def test_text_and_numbers_convert_to_the_declared_scalar_type(tp, value, expected):
    converted = check(tp, value)
    assert converted == expected and type(converted) is tp


@pytest.mark.parametrize("tp, value, message", [
    (int, True, "k: expected int, got True"),  # a bool is not a number here
    (float, False, "k: expected float, got False"),
    (int, "1:30", "k: expected int, got '1:30'"),  # YAML 1.1's base 60 would read 90
    (int, "0x1G", "k: expected int, got '0x1G'"),
    (float, 10**400, "k: an integer of 401 digits is out of the range of a float"),
    (int, "2.5", "k: expected an integer, got 2.5"),
    (float, [1.0], "k: expected float, got [1.0]"),
    (bool, 1, "k: expected true or false, got 1"),
    (str, [1], "k: expected a string, got [1]"),
    (str, None, "k: expected a string, got nothing (null); give a value or leave the key out"),
    (set[int], {1}, "k: unsupported config type set[int]"),
])
def test_values_of_the_wrong_type_are_refused(tp, value, message):
    assert fails(tp, value) == message


@pytest.mark.parametrize("value", [None, "null", "None", "NONE"])
def test_optional_accepts_none_and_its_spellings(value):
    assert check(Optional[int], value) is None
    assert check(int | None, value) is None


def test_optional_converts_other_values_and_reports_the_inner_error():
    assert check(Optional[int], "7") == 7
    assert fails(Optional[int], "x", "train.limit") == "train.limit: expected int, got 'x'"
    assert fails(int, None) == "k: expected int, got None"  # None only where the type allows it


def test_a_union_takes_the_first_type_that_fits_and_names_the_union_when_none_does():
    assert check(int | str, "5") == 5
    assert check(int | str, "five") == "five"
    assert fails(int | bool, "abc") == "k: 'abc' matches none of int | bool"


def test_a_yaml_boolean_becomes_the_literal_it_spells():
    """YAML 1.1 reads off/on/no/yes as booleans; a Literal that holds such a word gets the word back."""
    assert check(Literal["off", "on", "auto"], False) == "off"
    assert check(Literal["off", "on", "auto"], True) == "on"
    assert check(Literal["no", "yes"], False) == "no"
    assert check(Literal["auto", "true", "false"], True) == "true"
    assert fails(Literal["fast", "exact"], True) == "k: True is not allowed (allowed: fast, exact)"
    yes = load_yaml("a: yes")["a"]  # the text as written: the message names it, not YAML's reading
    assert fails(Literal["fast", "exact"], yes) == "k: 'yes' is not allowed (allowed: fast, exact)"


def test_lists_and_tuples_accept_comma_separated_text():
    assert check(list[str], "a, b,,c ") == ["a", "b", "c"]
    assert check(list[int], ["1", 2]) == [1, 2]
    assert check(tuple[int, ...], "3,4") == (3, 4)
    assert check(list[str], "") == []


def test_mappings_convert_keys_and_values_and_name_the_entry_at_fault():
    assert check(dict[str, float], {"a": "1e-3", "b": 2}) == {"a": 1e-3, "b": 2.0}
    assert fails(dict[str, int], {"a": "x"}, "model.options") == "model.options.a: expected int, got 'x'"


def test_any_is_passed_through_for_its_owner_to_check():
    value = {"nested": [1, "two"]}
    assert check(Any, value) is value
