"""The one exception type of the data pipeline, and the renaming of its messages' config keys for other commands."""

from __future__ import annotations

import re
from collections.abc import Mapping


class DataError(ValueError):
    """A data source, tokenizer or prepared dataset that cannot be used; the one-line message names the fix."""


def with_flag_names(message: str, flags: Mapping[str, str]) -> str:
    """`message` with the config keys in `flags` (data.val_every) named as a command's flags (--val-every): the
    checks a command shares with train.py name the config keys, which are flags only there."""
    return re.sub(r"\bdata\.\w+", lambda key: flags.get(key.group(0), key.group(0)), message)
