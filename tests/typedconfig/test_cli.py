"""typedconfig.cli.ArgumentParser: argparse whose usage errors are one line naming the tool and pointing at --help
(exit status 2), and whose --help keeps the description as written and shows every real default."""

import argparse

import pytest

from typedconfig.cli import ArgumentParser, HelpFormatter

DESCRIPTION = """Trains a model.

    python tool.py CONFIG [--steps N]

Columns:   kept   as   written."""


def parser(**kwargs) -> ArgumentParser:
    made = ArgumentParser(prog="tool.py", description=DESCRIPTION, **kwargs)
    made.add_argument("config", help="the YAML file")
    made.add_argument("--steps", type=int, default=10, help="optimiser steps")
    made.add_argument("--name", default=None, help="display name")
    made.add_argument("--dry-run", action="store_true", help="plan only")
    made.add_argument("--mode", choices=["fast", "exact"], default="fast", help="how")
    return made


def usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize("argv, message", [
    ([], "tool: the following arguments are required: config (see --help)\n"),
    (["a.yaml", "--bogus"], "tool: unrecognized arguments: --bogus (see --help)\n"),
    (["a.yaml", "--steps", "ten"], "tool: argument --steps: invalid int value: 'ten' (see --help)\n"),
])
def test_a_usage_error_is_one_line_on_stderr_with_exit_status_2(argv, message, capsys):
    """No usage block: the line names the tool (without .py), the problem, and where to look."""
    assert usage_error(argv, capsys) == message


def test_a_bad_choice_is_named_with_the_allowed_ones(capsys):
    message = usage_error(["a.yaml", "--mode", "slow"], capsys)  # argparse's wording of the choices varies
    assert message.startswith("tool: argument --mode: invalid choice: 'slow' (choose from ")
    assert "fast" in message and "exact" in message
    assert message.endswith(" (see --help)\n") and message.count("\n") == 1


def test_the_tool_may_raise_its_own_usage_errors_the_same_way(capsys):
    with pytest.raises(SystemExit) as info:
        ArgumentParser(prog="train").error("unrecognised arguments: x")
    assert info.value.code == 2
    assert capsys.readouterr().err == "train: unrecognised arguments: x (see --help)\n"


def test_valid_arguments_parse_as_with_argparse():
    args = parser().parse_args(["a.yaml", "--steps", "5", "--dry-run"])
    assert vars(args) == {"config": "a.yaml", "steps": 5, "name": None, "dry_run": True, "mode": "fast"}


def test_help_shows_real_defaults_only_and_the_description_as_written(capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # help wraps lines to the terminal width
    assert "optimiser steps (default: 10)" in text
    assert "how (default: fast)" in text
    assert "display name" in text and "display name (default" not in text  # None is no default
    assert "plan only" in text and "(default: False)" not in text  # nor is a flag's False
    assert "the YAML file" in text and "the YAML file (default" not in text
    raw = parser().format_help()
    assert "\n    python tool.py CONFIG [--steps N]\n" in raw and "Columns:   kept   as   written." in raw


def test_a_caller_may_choose_another_formatter():
    assert parser().formatter_class is HelpFormatter
    plain = parser(formatter_class=argparse.HelpFormatter)
    assert plain.formatter_class is argparse.HelpFormatter
    assert "(default: 10)" not in plain.format_help()
