"""Command-line parsing shared by the tools: usage errors are one line, and --help shows every default."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path


OVERRIDE = re.compile(r"(--)?[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")  # section.key=value or --section.key=value


def is_override(token: str) -> bool:
    """Whether a command-line token is a `section.key=value` override rather than a path (an existing path wins)."""
    # os.path.exists, not Path.exists: an override's text may be past the file-name limit, where the latter raises
    return OVERRIDE.match(token) is not None and not os.path.exists(token)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the overrides among `argv`, the other tokens): set aside before argparse sees them, which would take
    `--section.key=value` for an unknown option and an override after a bare option for that option's value."""
    return [token for token in argv if is_override(token)], [token for token in argv if not is_override(token)]


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`argv` (default: this process's arguments) parsed by `parser`, whose `overrides` positional takes what argparse
    leaves: the section.key=value overrides are set aside first (`split_overrides`) and put before those."""
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    args.overrides = overrides + args.overrides
    return args


def with_flag_names(message: str, flags: Mapping[str, str]) -> str:
    """`message` with the names in `flags` (config keys such as data.val_every, or a function's parameters) written as
    the command's flags (--val-every): the checks a command shares with train.py or a library function name what
    they check, which are flags only there."""
    if not flags:
        return message
    pattern = r"(?<![\w.])(" + "|".join(map(re.escape, sorted(flags, key=len, reverse=True))) + r")(?![\w.])"
    return re.sub(pattern, lambda name: flags[name.group(0)], message)


def path_argument(text: str) -> Path:
    """A command-line path (`type=` of argparse): an empty one is an error, not the working directory (`Path("")`
    is "."), which an unset shell variable would otherwise select without a word."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder (an unset shell variable?)")
    return Path(os.path.expanduser(text))


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and "(default: ...)" after every option that has one (None, and an empty list
    for a positional that takes any number, are no default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool) or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the house conventions: `--help` lists defaults; a usage error is one line on stderr naming the
    problem (`<prog>: <message> (see --help)`) and exit status 2, like every other error of the tools."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog.removesuffix('.py')}: {message} (see --help)\n")
