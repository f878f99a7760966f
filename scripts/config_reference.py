"""Print the config reference (every section, key, type, default and its comment) as markdown.

    python scripts/config_reference.py            # print
    python scripts/config_reference.py --write    # replace the reference section of README.md

The field comments in the config dataclasses are the documentation; a test checks that README.md is current.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

from fileio.tables import markdown_table
from training.config import RunConfig

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
_FIELD = re.compile(r"^\s+(\w+): ([^=#]+?)(?: = ([^#]+?))?\s*(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """name -> (type as written, comment) from the class source."""
    found, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD.match(line)
        if match:
            comment = match.group(4) or " ".join(above)
            found[match.group(1)] = (match.group(2).strip(), comment.strip())
        above = above + [line.strip().lstrip("#").strip()] if line.strip().startswith("#") else []
    return found


def table_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """One row of cells (key, type, default, meaning) per field of config dataclass `cls`; a nested config's fields
    follow as `prefix.key`."""
    comments = field_comments(cls)
    defaults = dataclasses.asdict(cls())
    rows = []
    for f in dataclasses.fields(cls):
        type_text, comment = comments.get(f.name, (str(f.type), ""))
        nested = dataclasses.is_dataclass(f.default_factory)
        default = defaults[f.name]
        shown = "null" if default is None else repr(default) if isinstance(default, str) else str(default)
        rows.append((f"`{prefix}{f.name}`", f"`{type_text}`", "" if nested else f"`{shown}`", comment))
        if nested:
            rows += table_rows(f.default_factory, f"{prefix}{f.name}.")
    return rows


def reference() -> str:
    lines = []
    for section in dataclasses.fields(RunConfig):
        rows = table_rows(section.default_factory)
        lines += [f"**`{section.name}`**", "", markdown_table(["key", "type", "default", "meaning"], rows), ""]
    return "\n".join(lines).rstrip() + "\n"


def readme_section() -> str:
    text = README.read_text()
    return text[text.index(START) + len(START) : text.index(END)].strip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    if args.write:
        text = README.read_text()
        head, tail = text[: text.index(START) + len(START)], text[text.index(END) :]
        README.write_text(f"{head}\n{reference()}{tail}")
    else:
        print(reference(), end="")


if __name__ == "__main__":
    main()
